//! Embedding-gather launch wrapper (kernels: gpu-kernels/src/embedding.rs).

use super::{check_len, to_u32};
use crate::gpu::launch::launch;
use crate::gpu::{Buffer, Device, GpuError, LaunchConfig, Result};

/// A `[vocab][hidden]` table on the device, in its storage type.
pub enum EmbeddingTable {
    F32(Buffer<f32>),
    F16(Buffer<u16>),
    Bf16(Buffer<u16>),
}

impl EmbeddingTable {
    fn len(&self) -> usize {
        match self {
            EmbeddingTable::F32(b) => b.len(),
            EmbeddingTable::F16(b) | EmbeddingTable::Bf16(b) => b.len(),
        }
    }
}

/// `y[t] = table[tokens[t]]` widened to f32. Token ids are checked against the vocabulary on
/// the host (they come from the host), then uploaded into `token_buf`.
pub fn embed_tokens(
    dev: &Device,
    table: &EmbeddingTable,
    vocab: usize,
    hidden: usize,
    tokens: &[u32],
    token_buf: &mut Buffer<u32>,
    y: &Buffer<f32>,
) -> Result<()> {
    const K: &str = "embed_rows";
    if table.len() < vocab * hidden {
        return Err(GpuError::Shape {
            kernel: K,
            message: format!("table has {} elements, needs {vocab}×{hidden}", table.len()),
        });
    }
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
    let hidden = to_u32(K, "hidden", hidden)?;
    let tok = &*token_buf;
    match table {
        EmbeddingTable::F32(t) => {
            launch!(
                dev,
                embedding::embed_rows_f32,
                cfg,
                t.input(),
                tok.input(),
                y.output(),
                hidden
            )
        }
        EmbeddingTable::F16(t) => {
            launch!(
                dev,
                embedding::embed_rows_f16,
                cfg,
                t.input(),
                tok.input(),
                y.output(),
                hidden
            )
        }
        EmbeddingTable::Bf16(t) => {
            launch!(
                dev,
                embedding::embed_rows_bf16,
                cfg,
                t.input(),
                tok.input(),
                y.output(),
                hidden
            )
        }
    }
}
