//! RMSNorm launch wrappers (kernels: gpu-kernels/src/norm.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::norm::{self, HEAD_THREADS, ROW_THREADS};

/// `rows` contiguous vectors of `width` f32, each normalised as `x / sqrt(mean(x²) + eps) · w`
/// with one weight vector `w[width]`: the rows of a chunk (`rms_norm_rows`) or its head
/// vectors (`rms_norm_heads`, Qwen3's QK-norm).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormShape {
    pub rows: usize,
    pub width: usize,
    pub eps: f32,
}

impl NormShape {
    /// Checks the shape against `x`, `w` and `y`; `(rows, width)` as the kernels take them, or
    /// `None` when there are no rows.
    fn validate(
        &self,
        kernel: &'static str,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        y: &Buffer<f32>,
    ) -> Result<Option<(u32, u32)>> {
        let NormShape { rows, width, eps } = *self;
        ensure_shape!(width > 0, kernel, "width must be positive");
        ensure_shape!(
            eps.is_finite() && eps >= 0.0,
            kernel,
            "eps {eps} must be finite and not negative"
        );
        check_len(kernel, "x", x, rows * width)?;
        check_len(kernel, "w", w, width)?;
        check_len(kernel, "y", y, rows * width)?;
        to_u32(kernel, "rows × width", rows * width)?;
        Ok((rows > 0).then_some((rows as u32, width as u32)))
    }
}

/// `y[r] = rmsnorm(x[r]) * w` for each of `shape.rows` rows. `y` may be `x`.
pub fn rms_norm_rows(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y: &Buffer<f32>,
    shape: NormShape,
) -> Result<()> {
    let Some((rows, cols)) = shape.validate("rms_norm_rows", x, w, y)? else {
        return Ok(());
    };
    let cfg = LaunchConfig::linear(rows, ROW_THREADS);
    norm::rms_norm_rows::launch(dev, cfg, x.input(), w.input(), y.output(), cols, shape.eps)
}

/// Per-head RMSNorm: `shape.rows` head vectors of `shape.width`, one shared weight. `y` may
/// be `x`.
pub fn rms_norm_heads(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y: &Buffer<f32>,
    shape: NormShape,
) -> Result<()> {
    let Some((groups, head_dim)) = shape.validate("rms_norm_heads", x, w, y)? else {
        return Ok(());
    };
    let warps = HEAD_THREADS / 32;
    let cfg = LaunchConfig::linear(groups.div_ceil(warps), HEAD_THREADS);
    let (x, w, y) = (x.input(), w.input(), y.output());
    norm::rms_norm_heads::launch(dev, cfg, x, w, y, groups, head_dim, shape.eps)
}

/// `rms_norm_rows` into bf16 `y16` (the tensor-core GEMMs' input, `[≥ rows][width]`), and into
/// f32 `y32` too when given (the MoE router reads full precision).
pub fn rms_norm_rows_bf16(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y16: &TmaMatrix,
    y32: Option<&Buffer<f32>>,
    shape: NormShape,
) -> Result<()> {
    const K: &str = "rms_norm_rows_bf16";
    let y32_buf = y32.unwrap_or(x); // unwritten without f32_too
    let Some((rows, cols)) = shape.validate(K, x, w, y32_buf)? else {
        return Ok(());
    };
    y16.check(K, "y16", shape.rows, shape.width)?;
    let cfg = LaunchConfig::linear(rows, ROW_THREADS);
    let f32_too = y32.is_some() as u32;
    let (x, w, y16, y32) = (x.input(), w.input(), y16.data().output(), y32_buf.output());
    norm::rms_norm_rows_bf16::launch(dev, cfg, x, w, y16, y32, cols, shape.eps, f32_too)
}
