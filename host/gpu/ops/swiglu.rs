//! SwiGLU launch wrapper (kernel: gpu-kernels/src/swiglu.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result};
use gpu_kernels::swiglu;

/// `y[i] = silu(gate[i]) * up[i]` for `i < n`.
pub fn swiglu(
    dev: &Device,
    gate: &Buffer<f32>,
    up: &Buffer<f32>,
    y: &Buffer<f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "swiglu";
    check_len(K, "gate", gate, n)?;
    check_len(K, "up", up, n)?;
    check_len(K, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::covering(n, 256);
    let n = to_u32(K, "n", n)?;
    swiglu::swiglu::launch(dev, cfg, gate.input(), up.input(), y.output(), n)
}
