//! Embedding-gather launch wrapper (kernels: gpu-kernels/src/embedding.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, GpuError, LaunchConfig, Result, ensure_shape};
use gpu_kernels::embedding;

/// A table's elements on the device, in its storage type.
pub enum TableData {
    F32(Buffer<f32>),
    F16(Buffer<u16>),
    Bf16(Buffer<u16>),
}

impl TableData {
    fn len(&self) -> usize {
        match self {
            TableData::F32(b) => b.len(),
            TableData::F16(b) | TableData::Bf16(b) => b.len(),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            TableData::F32(b) => b.bytes(),
            TableData::F16(b) | TableData::Bf16(b) => b.bytes(),
        }
    }
}

/// A `[vocab][hidden]` embedding table on the device, checked once when made.
pub struct EmbeddingTable {
    data: TableData,
    vocab: usize,
    hidden: usize,
}

impl EmbeddingTable {
    /// Fails unless `data` holds `vocab × hidden` elements and `hidden` is positive.
    pub fn new(data: TableData, vocab: usize, hidden: usize) -> Result<Self> {
        const K: &str = "embed_rows";
        ensure_shape!(vocab > 0 && hidden > 0, K, "empty table {vocab}×{hidden}");
        ensure_shape!(
            data.len() >= vocab * hidden,
            K,
            "table has {} elements, needs {vocab}×{hidden}",
            data.len()
        );
        to_u32(K, "hidden", hidden)?;
        Ok(EmbeddingTable {
            data,
            vocab,
            hidden,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Device bytes of the table.
    pub fn bytes(&self) -> u64 {
        self.data.bytes()
    }
}

/// `y[t] = table[tokens[t]]` widened to f32. Token ids are checked against the vocabulary on
/// the host (they come from the host), then uploaded into `token_buf`.
pub fn embed_tokens(
    dev: &Device,
    table: &EmbeddingTable,
    tokens: &[u32],
    token_buf: &mut Buffer<u32>,
    y: &Buffer<f32>,
) -> Result<()> {
    const K: &str = "embed_rows";
    let (vocab, hidden) = (table.vocab, table.hidden);
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= vocab)
    {
        return Err(GpuError::Shape {
            kernel: K,
            message: format!("token {t} at position {i} is outside the vocabulary of {vocab}"),
        });
    }
    check_len(K, "token buffer", token_buf, tokens.len())?;
    check_len(K, "y", y, tokens.len() * hidden)?;
    if tokens.is_empty() {
        return Ok(());
    }
    token_buf.write(tokens)?;
    let cfg = LaunchConfig::linear(to_u32(K, "tokens", tokens.len())?, 256);
    let (tok, y, hidden) = (token_buf.input(), y.output(), hidden as u32);
    match &table.data {
        TableData::F32(t) => embedding::embed_rows_f32::launch(dev, cfg, t.input(), tok, y, hidden),
        TableData::F16(t) => embedding::embed_rows_f16::launch(dev, cfg, t.input(), tok, y, hidden),
        TableData::Bf16(t) => {
            embedding::embed_rows_bf16::launch(dev, cfg, t.input(), tok, y, hidden)
        }
    }
}
