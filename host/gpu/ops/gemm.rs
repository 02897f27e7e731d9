//! The f32 GEMM's launch wrapper (kernel: gpu-kernels/src/gemm.rs): the shared-expert gate, on
//! CUDA cores in full f32. Weights are `[m][k]` (GGUF order). Every
//! bf16-weight GEMM is in `gemm_wgmma` (tensor cores); [`Epilogue`] is shared with it.

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::gemm::{self, K_SPLITS, THREADS, TILE_M, TILE_N};

/// `y[rows][m] = x[rows][k] · w[m][k]ᵀ`: rows of activations, output features, input features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub rows: usize,
    pub m: usize,
    pub k: usize,
}

/// A validated GEMM launch: one block per 64 × 64 output tile, and the sizes as u32.
struct GemmLaunch {
    cfg: LaunchConfig,
    rows: u32,
    m: u32,
    k: u32,
}

impl GemmShape {
    /// Checks the shape against `x` (`[rows][k]`), `w` (`w_len` elements per weight matrix,
    /// `[m][k]`) and `y` (`[rows][m]`); `None` when there are no rows. `threads`: the kernel's
    /// block size.
    fn validate<W: crate::gpu::Element>(
        &self,
        kernel: &'static str,
        x: &Buffer<f32>,
        weights: &[(&str, &Buffer<W>)],
        y: &Buffer<f32>,
        threads: u32,
    ) -> Result<Option<GemmLaunch>> {
        let GemmShape { rows, m, k } = *self;
        ensure_shape!(
            m > 0 && k > 0,
            kernel,
            "m = {m} and k = {k} must be positive"
        );
        for (name, w) in weights {
            check_len(kernel, name, w, m * k)?;
        }
        check_len(kernel, "x", x, rows * k)?;
        check_len(kernel, "y", y, rows * m)?;
        to_u32(kernel, "rows × m", rows * m)?;
        to_u32(kernel, "rows × k", rows * k)?;
        to_u32(kernel, "m × k", m * k)?;
        if rows == 0 {
            return Ok(None);
        }
        let mut cfg = LaunchConfig::linear(m.div_ceil(TILE_N) as u32, threads);
        cfg.grid.1 = to_u32(kernel, "row tiles", rows.div_ceil(TILE_M))?;
        ensure_shape!(cfg.grid.1 <= 65535, kernel, "{rows} rows exceed one launch");
        Ok(Some(GemmLaunch {
            cfg,
            rows: rows as u32,
            m: m as u32,
            k: k as u32,
        }))
    }
}

/// What a GEMM adds to the product before it stores it in `y` (see `gemm_wgmma::matmul`).
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `+ bias[m]` (f32).
    pub bias: Option<&'a Buffer<f32>>,
    /// `+ y`: the residual add (`y` is read, then overwritten).
    pub add_to_y: bool,
}

impl<'a> Epilogue<'a> {
    /// `y = x · wᵀ`.
    pub const STORE: Epilogue<'static> = Epilogue {
        bias: None,
        add_to_y: false,
    };
    /// `y += x · wᵀ` (the residual stream).
    pub const ADD_TO_Y: Epilogue<'static> = Epilogue {
        bias: None,
        add_to_y: true,
    };

    /// `y = x · wᵀ + bias` (plain product without a bias).
    pub fn bias(bias: Option<&'a Buffer<f32>>) -> Self {
        Epilogue {
            bias,
            add_to_y: false,
        }
    }
}

/// Elements of the partial-sum buffer `matmul_f32` needs for `shape`.
pub fn partials_len(shape: GemmShape) -> usize {
    K_SPLITS * shape.rows * shape.m
}

/// `y = x · wᵀ` with f32 weights `w[m][k]`, through `partials` (at least
/// [`partials_len`]`(shape)` elements: the fixed K splits' sums, added in order).
pub fn matmul_f32(
    dev: &Device,
    x: &Buffer<f32>,
    w: &Buffer<f32>,
    y: &Buffer<f32>,
    partials: &Buffer<f32>,
    shape: GemmShape,
) -> Result<()> {
    let Some(mut g) = shape.validate("gemm_f32", x, &[("w", w)], y, THREADS)? else {
        return Ok(());
    };
    let n = shape.rows * shape.m;
    check_len("gemm_f32", "partials", partials, K_SPLITS * n)?;
    to_u32("gemm_f32", "partials", K_SPLITS * n)?;
    g.cfg.grid.2 = K_SPLITS as u32;
    let (xi, wi) = (x.input(), w.input());
    gemm::gemm_f32::launch(dev, g.cfg, xi, wi, partials.output(), g.rows, g.m, g.k)?;
    let sum = LaunchConfig::covering(n, 256);
    gemm::gemm_f32_sum_splits::launch(dev, sum, partials.input(), y.output(), n as u32)
}
