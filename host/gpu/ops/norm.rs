//! RMSNorm launch wrapper (kernel: gpu-kernels/src/norm.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::norm::{self, NORM_ADD, NORM_F32_TOO, ROW_THREADS, VEC};

/// `rows` contiguous vectors of `width` f32, each normalised as `x / sqrt(mean(x²) + eps) · w`
/// with one weight vector `w[width]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormShape {
    pub rows: usize,
    pub width: usize,
    pub eps: f32,
}

/// `y16[r] = bf16(rmsnorm(x[r]) · w)` for each of `shape.rows` rows (the tensor-core GEMMs'
/// input, `[≥ rows][width]`; `width` a multiple of `VEC`, as a bf16 tensor map's rows are),
/// and the f32 values into `y32` too when given (the shared-expert gate reads full precision).
/// `y32` may be `x`.
pub fn rms_norm_rows(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y16: &TmaMatrix,
    y32: Option<&Buffer<f32>>,
    shape: NormShape,
) -> Result<()> {
    launch(dev, (x, None), w, (y16, y32), shape)
}

/// [`rms_norm_rows`] of `x + add`, which is stored into `x` first: the residual add of the
/// projection that wrote `add` (`[rows][width]` f32), done where the stream is read anyway
/// instead of in that GEMM's epilogue (same values, same bits). `y32` must not be `x`.
pub fn rms_norm_rows_adding(
    dev: &Device,
    x: &Buffer<f32>,
    add: &Buffer<f32>,
    w: &Buffer<f32>,
    y16: &TmaMatrix,
    y32: Option<&Buffer<f32>>,
    shape: NormShape,
) -> Result<()> {
    ensure_shape!(
        y32.is_none_or(|y| y.identity() != x.identity()),
        "rms_norm_rows",
        "y32 is x: the normed rows would overwrite the residual sum"
    );
    launch(dev, (x, Some(add)), w, (y16, y32), shape)
}

fn launch(
    dev: &Device,
    (x, add): (&Buffer<f32>, Option<&Buffer<f32>>),
    w: &Buffer<f32>,
    (y16, y32): (&TmaMatrix, Option<&Buffer<f32>>),
    shape: NormShape,
) -> Result<()> {
    const K: &str = "rms_norm_rows";
    let NormShape { rows, width, eps } = shape;
    ensure_shape!(width > 0, K, "width must be positive");
    ensure_shape!(
        width.is_multiple_of(VEC),
        K,
        "width {width} is not a multiple of {VEC}"
    );
    ensure_shape!(
        eps.is_finite() && eps >= 0.0,
        K,
        "eps {eps} must be finite and not negative"
    );
    check_len(K, "x", x, rows * width)?;
    if let Some(a) = add {
        check_len(K, "add", a, rows * width)?;
    }
    check_len(K, "w", w, width)?;
    if let Some(y) = y32 {
        check_len(K, "y32", y, rows * width)?;
    }
    y16.check(K, "y16", rows, width)?;
    let n_rows = to_u32(K, "rows", rows)?;
    to_u32(K, "rows × width", rows * width)?;
    if rows == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::linear(n_rows, ROW_THREADS);
    let flags = (NORM_F32_TOO * y32.is_some() as u32) | (NORM_ADD * add.is_some() as u32);
    // Unread without NORM_ADD / unwritten without NORM_F32_TOO.
    let (add, y32) = (add.unwrap_or(x), y32.unwrap_or(x));
    let (xi, add, x_sum) = (x.input(), add.input(), x.output());
    let (w, y16, y32) = (w.input(), y16.data().output(), y32.output());
    norm::rms_norm_rows::launch(
        dev,
        cfg,
        xi,
        add,
        x_sum,
        w,
        y16,
        y32,
        width as u32,
        eps,
        flags,
    )
}
