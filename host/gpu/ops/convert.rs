//! f32 ↔ bf16 conversion launch wrappers (kernels: gpu-kernels/src/convert.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result};
use gpu_kernels::convert;

/// `y[i] = bf16(x[i])` (round to nearest even) for `i < n`.
pub fn f32_to_bf16(dev: &Device, x: &Buffer<f32>, y: &Buffer<u16>, n: usize) -> Result<()> {
    const K: &str = "f32_to_bf16_kernel";
    check_len(K, "x", x, n)?;
    check_len(K, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::covering(n, 256);
    let n = to_u32(K, "n", n)?;
    convert::f32_to_bf16_kernel::launch(dev, cfg, x.input(), y.output(), n)
}

/// `y[i] = f32(x[i])` (exact) for `i < n`.
pub fn bf16_to_f32(dev: &Device, x: &Buffer<u16>, y: &Buffer<f32>, n: usize) -> Result<()> {
    const K: &str = "bf16_to_f32_kernel";
    check_len(K, "x", x, n)?;
    check_len(K, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::covering(n, 256);
    let n = to_u32(K, "n", n)?;
    convert::bf16_to_f32_kernel::launch(dev, cfg, x.input(), y.output(), n)
}

/// `y[p·n + i]` = part `p` of `gpu_kernels::device::float::split_bf16x3(x[i])` for `i < n`
/// (lo, mid, hi: three stacked bf16 copies of `x` whose sum is exactly `x`).
pub fn f32_to_bf16x3(dev: &Device, x: &Buffer<f32>, y: &Buffer<u16>, n: usize) -> Result<()> {
    const K: &str = "f32_to_bf16x3_kernel";
    check_len(K, "x", x, n)?;
    check_len(K, "y", y, 3 * n)?;
    to_u32(K, "3 n", 3 * n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::covering(n, 256);
    let n = to_u32(K, "n", n)?;
    convert::f32_to_bf16x3_kernel::launch(dev, cfg, x.input(), y.output(), n)
}
