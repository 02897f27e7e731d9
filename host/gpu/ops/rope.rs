//! NEOX RoPE launch wrapper (kernel: gpu-kernels/src/rope.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::rope;

/// `inv_freq[i] = base^(-2i/rot_dims)` for `i < rot_dims/2`, computed in f64 and rounded once.
pub fn rope_inv_freq(base: f64, rot_dims: usize) -> Vec<f32> {
    (0..rot_dims / 2)
        .map(|i| base.powf(-2.0 * i as f64 / rot_dims as f64) as f32)
        .collect()
}

/// `x` is `[tokens][n_heads][head_dim]`; the first `rot_dims` dimensions of each head rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeShape {
    pub tokens: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub rot_dims: usize,
}

impl RopeShape {
    /// Rotated pairs in all: one thread each.
    pub fn pairs(&self) -> usize {
        self.tokens * self.n_heads * self.rot_dims / 2
    }

    /// Checks the shape; `[tokens, n_heads, head_dim, rot_dims]` as the kernel takes them.
    fn validate(&self, kernel: &'static str) -> Result<[u32; 4]> {
        let RopeShape {
            tokens,
            n_heads,
            head_dim,
            rot_dims,
        } = *self;
        ensure_shape!(
            rot_dims > 0 && rot_dims.is_multiple_of(2) && rot_dims <= head_dim,
            kernel,
            "rot_dims {rot_dims} must be even and in 2..={head_dim}"
        );
        to_u32(
            kernel,
            "tokens × heads × head_dim",
            tokens * n_heads * head_dim,
        )?;
        Ok([tokens, n_heads, head_dim, rot_dims].map(|v| v as u32))
    }
}

/// Rotates `x` in place at `positions[tokens]` with frequencies `inv_freq[rot_dims / 2]`.
pub fn rope_neox(
    dev: &Device,
    x: &Buffer<f32>,
    positions: &Buffer<u32>,
    inv_freq: &Buffer<f32>,
    shape: RopeShape,
) -> Result<()> {
    const K: &str = "rope_neox";
    let [tokens, n_heads, head_dim, rot_dims] = shape.validate(K)?;
    check_len(K, "x", x, shape.tokens * shape.n_heads * shape.head_dim)?;
    check_len(K, "positions", positions, shape.tokens)?;
    check_len(K, "inv_freq", inv_freq, shape.rot_dims / 2)?;
    if shape.pairs() == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::covering(shape.pairs(), 256);
    let (x, p, f) = (x.output(), positions.input(), inv_freq.input());
    rope::rope_neox::launch(dev, cfg, x, p, f, tokens, n_heads, head_dim, rot_dims)
}
