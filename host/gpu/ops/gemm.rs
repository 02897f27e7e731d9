//! GEMM launch wrappers (kernels: gpu-kernels/src/gemm.rs). Weights are `[m][k]` (GGUF order).
//! bf16-weight GEMMs run on tensor cores with activations rounded to bf16; the f32-weight GEMM
//! (router, shared-expert gate) stays on CUDA cores in full f32.

use super::{check_len, to_u32};
use crate::gpu::launch::launch;
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::gemm::{GEMM_ADD_BIAS, GEMM_ADD_TO_Y, MMA_THREADS, THREADS, TILE_M, TILE_N};

/// Checks `x` (`[n_rows][k]`) and `y` (`[n_rows][m]`) and returns the launch: one block per
/// 64 × 64 output tile with `threads` threads (`MMA_THREADS` for the tensor-core kernels,
/// `THREADS` for the f32 one), and `(n_rows, m, k)` as the kernels take them; `None` when there
/// are no rows. Callers check their weights first.
fn gemm_launch(
    kernel: &'static str,
    x: &Buffer<f32>,
    y: &Buffer<f32>,
    (n_rows, m, k): (usize, usize, usize),
    threads: u32,
) -> Result<Option<(LaunchConfig, u32, u32, u32)>> {
    ensure_shape!(
        m > 0 && k > 0,
        kernel,
        "m = {m} and k = {k} must be positive"
    );
    check_len(kernel, "x", x, n_rows * k)?;
    check_len(kernel, "y", y, n_rows * m)?;
    to_u32(kernel, "rows × m", n_rows * m)?;
    if n_rows == 0 {
        return Ok(None);
    }
    let mut cfg = LaunchConfig::linear(to_u32(kernel, "m tiles", m.div_ceil(TILE_N))?, threads);
    cfg.grid.1 = to_u32(kernel, "row tiles", n_rows.div_ceil(TILE_M))?;
    ensure_shape!(
        cfg.grid.1 <= 65535,
        kernel,
        "{n_rows} rows exceed one launch"
    );
    let dims = (
        to_u32(kernel, "rows", n_rows)?,
        to_u32(kernel, "m", m)?,
        to_u32(kernel, "k", k)?,
    );
    Ok(Some((cfg, dims.0, dims.1, dims.2)))
}

/// `y = x · wᵀ (+ bias) (+ y when add_to_y)`; `w`: bf16 `[m][k]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<u16>,
    bias: Option<&Buffer<f32>>,
    y: &Buffer<f32>,
    n_rows: usize,
    m: usize,
    k: usize,
    add_to_y: bool,
) -> Result<()> {
    const K: &str = "gemm_bf16";
    check_len(K, "w", w, m * k)?;
    if let Some(b) = bias {
        check_len(K, "bias", b, m)?;
    }
    let Some((cfg, n_rows, m, k)) = gemm_launch(K, x, y, (n_rows, m, k), MMA_THREADS)? else {
        return Ok(());
    };
    let flags =
        if bias.is_some() { GEMM_ADD_BIAS } else { 0 } | if add_to_y { GEMM_ADD_TO_Y } else { 0 };
    let bias = bias.unwrap_or(x); // unread without GEMM_ADD_BIAS
    launch!(
        dev,
        gemm::gemm_bf16,
        cfg,
        x.input(),
        w.input(),
        bias.input(),
        y.output(),
        n_rows,
        m,
        k,
        flags
    )
}

/// `y = x · wᵀ` with f32 weights.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y: &Buffer<f32>,
    n_rows: usize,
    m: usize,
    k: usize,
) -> Result<()> {
    const K: &str = "gemm_f32";
    check_len(K, "w", w, m * k)?;
    let Some((cfg, n_rows, m, k)) = gemm_launch(K, x, y, (n_rows, m, k), THREADS)? else {
        return Ok(());
    };
    launch!(
        dev,
        gemm::gemm_f32,
        cfg,
        x.input(),
        w.input(),
        y.output(),
        n_rows,
        m,
        k
    )
}

/// `y = silu(x · w_gateᵀ) ⊙ (x · w_upᵀ)`; both weights bf16 `[m][k]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_gated_bf16(
    dev: &Device,
    x: &Buffer<f32>,
    w_gate: &Buffer<u16>,
    w_up: &Buffer<u16>,
    y: &Buffer<f32>,
    n_rows: usize,
    m: usize,
    k: usize,
) -> Result<()> {
    const K: &str = "gemm_gated_bf16";
    check_len(K, "w_gate", w_gate, m * k)?;
    check_len(K, "w_up", w_up, m * k)?;
    let Some((cfg, n_rows, m, k)) = gemm_launch(K, x, y, (n_rows, m, k), MMA_THREADS)? else {
        return Ok(());
    };
    launch!(
        dev,
        gemm::gemm_gated_bf16,
        cfg,
        x.input(),
        w_gate.input(),
        w_up.input(),
        y.output(),
        n_rows,
        m,
        k
    )
}
