//! RMSNorm launch wrappers (kernels: gpu-kernels/src/norm.rs).

use super::{check_len, to_u32};
use crate::gpu::launch::launch;
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};

/// Threads per row. Fixed (not derived from the row count or width) so each row's reduction
/// order is the same in every launch: a condition of batch invariance.
const ROW_THREADS: u32 = 256;
const HEAD_THREADS: u32 = 256;

/// `y[r] = rmsnorm(x[r]) * w` for `rows` rows of `cols`. `y` may be `x`.
pub fn rms_norm_rows(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y: &Buffer<f32>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    const K: &str = "rms_norm_rows";
    ensure_shape!(cols > 0, K, "cols must be positive");
    check_len(K, "x", x, rows * cols)?;
    check_len(K, "w", w, cols)?;
    check_len(K, "y", y, rows * cols)?;
    if rows == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::linear(to_u32(K, "rows", rows)?, ROW_THREADS);
    let cols = to_u32(K, "cols", cols)?;
    launch!(
        dev,
        norm::rms_norm_rows,
        cfg,
        x.input(),
        w.input(),
        y.output(),
        cols,
        eps
    )
}

/// Per-head RMSNorm of `groups` vectors of `head_dim` with a shared weight. `y` may be `x`.
pub fn rms_norm_heads(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y: &Buffer<f32>,
    groups: usize,
    head_dim: usize,
    eps: f32,
) -> Result<()> {
    const K: &str = "rms_norm_heads";
    ensure_shape!(head_dim > 0, K, "head_dim must be positive");
    check_len(K, "x", x, groups * head_dim)?;
    check_len(K, "w", w, head_dim)?;
    check_len(K, "y", y, groups * head_dim)?;
    if groups == 0 {
        return Ok(());
    }
    let warps = (HEAD_THREADS / 32) as usize;
    let cfg = LaunchConfig::linear(to_u32(K, "groups", groups.div_ceil(warps))?, HEAD_THREADS);
    let (groups, head_dim) = (
        to_u32(K, "groups", groups)?,
        to_u32(K, "head_dim", head_dim)?,
    );
    launch!(
        dev,
        norm::rms_norm_heads,
        cfg,
        x.input(),
        w.input(),
        y.output(),
        groups,
        head_dim,
        eps
    )
}
