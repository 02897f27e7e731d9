//! NEOX RoPE launch wrapper (kernel: gpu-kernels/src/rope.rs).

use super::{check_len, to_u32};
use crate::gpu::launch::launch;
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};

/// `inv_freq[i] = base^(-2i/rot_dims)` for `i < rot_dims/2`, computed in f64 and rounded once.
pub fn rope_inv_freq(base: f64, rot_dims: usize) -> Vec<f32> {
    (0..rot_dims / 2)
        .map(|i| base.powf(-2.0 * i as f64 / rot_dims as f64) as f32)
        .collect()
}

/// Rotates `x[tokens][n_heads][head_dim]` in place at `positions[tokens]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_neox(
    dev: &Device,
    x: &Buffer<f32>,
    positions: &Buffer<u32>,
    inv_freq: &Buffer<f32>,
    tokens: usize,
    n_heads: usize,
    head_dim: usize,
    rot_dims: usize,
) -> Result<()> {
    const K: &str = "rope_neox";
    ensure_shape!(
        rot_dims > 0 && rot_dims.is_multiple_of(2) && rot_dims <= head_dim,
        K,
        "rot_dims {rot_dims} must be even and in 2..={head_dim}"
    );
    check_len(K, "x", x, tokens * n_heads * head_dim)?;
    check_len(K, "positions", positions, tokens)?;
    check_len(K, "inv_freq", inv_freq, rot_dims / 2)?;
    let pairs = tokens * n_heads * rot_dims / 2;
    if pairs == 0 {
        return Ok(());
    }
    to_u32(K, "pairs", pairs)?;
    let cfg = LaunchConfig::covering(pairs, 256);
    launch!(
        dev,
        rope::rope_neox,
        cfg,
        x.output(),
        positions.input(),
        inv_freq.input(),
        to_u32(K, "tokens", tokens)?,
        to_u32(K, "n_heads", n_heads)?,
        to_u32(K, "head_dim", head_dim)?,
        to_u32(K, "rot_dims", rot_dims)?
    )
}
