//! Seeded random fills on the device (kernels: gpu-kernels/src/random_fill.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, Element, LaunchConfig, Result};
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

/// The launch of a fill of `n` elements of `out` (`None`: nothing to fill): its grid, `n`
/// and the seed's low and high words, after checking the length.
fn prepare<T: Element>(
    kernel: &'static str,
    out: &Buffer<T>,
    n: usize,
    fill: Fill,
) -> Result<Option<(LaunchConfig, u32, u32, u32)>> {
    check_len(kernel, "out", out, n)?;
    if n == 0 {
        return Ok(None);
    }
    let cfg = Fill::launch_config(n);
    let (lo, hi) = (fill.seed as u32, (fill.seed >> 32) as u32);
    Ok(Some((cfg, to_u32(kernel, "n", n)?, lo, hi)))
}

/// Fills the first `n` elements of `out` with bf16 values.
pub fn fill_bf16(dev: &Device, out: &Buffer<u16>, n: usize, fill: Fill) -> Result<()> {
    let Some((cfg, n, lo, hi)) = prepare("fill_uniform_bf16", out, n, fill)? else {
        return Ok(());
    };
    let (o, scale, offset) = (out.output(), fill.scale, fill.offset);
    random_fill::fill_uniform_bf16::launch(dev, cfg, o, n, lo, hi, scale, offset)
}

/// Fills the first `n` elements of `out` with f32 values.
pub fn fill_f32(dev: &Device, out: &Buffer<f32>, n: usize, fill: Fill) -> Result<()> {
    let Some((cfg, n, lo, hi)) = prepare("fill_uniform_f32", out, n, fill)? else {
        return Ok(());
    };
    let (o, scale, offset) = (out.output(), fill.scale, fill.offset);
    random_fill::fill_uniform_f32::launch(dev, cfg, o, n, lo, hi, scale, offset)
}
