//! Plain-Rust CPU reference: the forward pass (`forward`), built from the float64 reference
//! operations (`ops`) that the kernel tests also compare against.

pub mod forward;
pub mod ops;

pub use forward::{KvCache, forward, forward_with_cache};

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty prompt")]
    EmptyPrompt,
    #[error(
        "prompt of {len} tokens starting at position {start} exceeds the context length \
         (ctx = {ctx})"
    )]
    ContextOverflow {
        start: usize,
        len: usize,
        ctx: usize,
    },
    #[error("token {token} at prompt index {index} is out of range (vocab = {vocab})")]
    TokenOutOfRange {
        index: usize,
        token: u32,
        vocab: usize,
    },
}

/// Logits, one row of `vocab` values per requested position.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    pub vocab: usize,
    pub data: Vec<f32>,
    /// Per token fed, the smallest router margin over its MoE layers: the k-th largest router
    /// logit minus the (k+1)-th (infinite for dense models). Where it is tiny, an engine whose
    /// rounding differs may pick another expert there (MANIFEST: "positions whose top-k router
    /// margin is small may flip an expert"); tests use it to tell such a flip from a bug.
    pub router_margins: Vec<f64>,
}

impl Logits {
    pub fn n_rows(&self) -> usize {
        self.data.len() / self.vocab
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    pub fn last(&self) -> &[f32] {
        self.row(self.n_rows() - 1)
    }
}
