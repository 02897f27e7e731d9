//! Seeded random fills on the device (kernels: gpu-kernels/src/random_fill.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result};
use gpu_kernels::random_fill;

/// What to fill with: `offset + scale · u`, `u` uniform on [-1, 1) from stream `seed`
/// (`gpu_kernels::random_fill::uniform`). Standard deviation `scale / √3`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fill {
    pub seed: u64,
    pub scale: f32,
    pub offset: f32,
}

impl Fill {
    /// Zero-mean values of standard deviation `std`.
    pub fn with_std(seed: u64, std: f32) -> Self {
        Fill {
            seed,
            scale: std * 3f32.sqrt(),
            offset: 0.0,
        }
    }

    /// Enough blocks to cover `n` with 256 threads, at most 64K (the kernels stride).
    fn launch_config(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 65536);
        LaunchConfig::linear(blocks as u32, 256)
    }
}

/// Fills the first `n` elements of `out` with bf16 values.
pub fn fill_bf16(dev: &Device, out: &Buffer<u16>, n: usize, fill: Fill) -> Result<()> {
    const K: &str = "fill_uniform_bf16";
    check_len(K, "out", out, n)?;
    if n == 0 {
        return Ok(());
    }
    let (lo, hi) = (fill.seed as u32, (fill.seed >> 32) as u32);
    let cfg = Fill::launch_config(n);
    let n = to_u32(K, "n", n)?;
    random_fill::fill_uniform_bf16::launch(
        dev,
        cfg,
        out.output(),
        n,
        lo,
        hi,
        fill.scale,
        fill.offset,
    )
}

/// Fills the first `n` elements of `out` with f32 values.
pub fn fill_f32(dev: &Device, out: &Buffer<f32>, n: usize, fill: Fill) -> Result<()> {
    const K: &str = "fill_uniform_f32";
    check_len(K, "out", out, n)?;
    if n == 0 {
        return Ok(());
    }
    let (lo, hi) = (fill.seed as u32, (fill.seed >> 32) as u32);
    let cfg = Fill::launch_config(n);
    let n = to_u32(K, "n", n)?;
    random_fill::fill_uniform_f32::launch(
        dev,
        cfg,
        out.output(),
        n,
        lo,
        hi,
        fill.scale,
        fill.offset,
    )
}
