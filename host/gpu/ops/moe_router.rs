//! The MoE routing stage's launch wrapper (kernels: gpu-kernels/src/moe_router.rs): router
//! logits from the f32 normed rows and the f32 router weights, softmax and top-k, and the
//! grouping by expert, written into a [`Routing`]. Up to `FAST_MAX_EXPERTS` experts with a
//! hidden size that is a multiple of 4 take the fast path (three launches split, two fused);
//! anything else falls back to `gemm_f32` + [`Routing::route`] (six launches).

use super::gemm::{GemmShape, matmul_f32, partials_len};
use super::moe::Routing;
use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::moe_router::{
    self, FAST_MAX_EXPERTS, FLAG_FUSED, FLAG_RENORMALISE, FLAG_WRITE_LOGITS, K_SEGMENTS, MAX_TOP_K,
    PLACE_THREADS, THREADS, finish_threads, gemm_shared_bytes, tile_tokens,
};

/// How the fast path computes the logits (the bits are the same either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RouterMode {
    /// What the pipeline runs: split, for every chunk size, so a chunk of any size makes the
    /// same launches as a chunk of one (`tests/pipeline.rs` checks that). Split fills the GPU
    /// (`K_SEGMENTS` blocks per tile of tokens) where fused leaves most SMs idle: on the H200
    /// (2026-11-29, `benches/kernels.rs`, 128 experts, hidden 2048) split took 0.046 / 0.111
    /// ms at N = 512 / 4096, fused 0.181 / 0.185.
    #[default]
    Auto,
    /// Partial logits per K segment, then a finish launch that adds them and routes.
    Split,
    /// One launch computes and routes each tile of tokens.
    Fused,
}

/// What one routing call does besides routing.
#[derive(Clone, Copy, Default)]
pub struct RouteOptions<'a> {
    /// Rescale each token's top-k weights to sum 1.
    pub renormalise: bool,
    pub mode: RouterMode,
    /// Also write the router logits `[n][n_expert]` here (tests, debugging).
    pub logits: Option<&'a Buffer<f32>>,
}

/// The router's own buffers, per path.
enum Path {
    /// Partial logits `[K_SEGMENTS][tokens][n_expert]` and per-tile expert counts.
    Fast {
        partials: Buffer<f32>,
        tile_counts: Buffer<u32>,
    },
    /// Logits and `gemm_f32`'s partial sums.
    Fallback {
        logits: Buffer<f32>,
        partials: Buffer<f32>,
    },
}

/// The routing stage of one model's MoE layers, for up to `max_tokens` tokens at once.
pub struct Router {
    n_expert: usize,
    hidden: usize,
    max_tokens: usize,
    path: Path,
}

impl Router {
    pub fn new(dev: &Device, max_tokens: usize, n_expert: usize, hidden: usize) -> Result<Self> {
        ensure_shape!(
            n_expert > 0 && hidden > 0,
            "moe_router",
            "{n_expert} experts and hidden {hidden} must be positive"
        );
        let fast = n_expert <= FAST_MAX_EXPERTS && hidden.is_multiple_of(4);
        let logits = max_tokens * n_expert;
        let path = if fast {
            let tiles = max_tokens.div_ceil(tile_tokens(n_expert)).max(1);
            Path::Fast {
                partials: dev.alloc(K_SEGMENTS * logits, "router partial logits")?,
                tile_counts: dev.alloc(tiles * n_expert, "router per-tile expert counts")?,
            }
        } else {
            let shape = GemmShape {
                rows: max_tokens,
                m: n_expert,
                k: hidden,
            };
            Path::Fallback {
                logits: dev.alloc(logits, "router logits")?,
                partials: dev.alloc(partials_len(shape), "router partial sums")?,
            }
        };
        Ok(Router {
            n_expert,
            hidden,
            max_tokens,
            path,
        })
    }

    /// Whether this router runs the fast path (else `gemm_f32` + [`Routing::route`]).
    pub fn is_fast(&self) -> bool {
        matches!(self.path, Path::Fast { .. })
    }

    /// Routes `n` tokens: `x` `[n][hidden]` (f32), `w` `[n_expert][hidden]` (f32), into
    /// `routing` (ids, weights, grouping, tile table).
    pub fn route(
        &self,
        dev: &Device,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        routing: &Routing,
        n: usize,
        opts: RouteOptions<'_>,
    ) -> Result<()> {
        const K: &str = "moe_router";
        let (ne, h, k) = (self.n_expert, self.hidden, routing.top_k());
        ensure_shape!(
            routing.n_expert() == ne,
            K,
            "the routing is for {} experts, the router for {ne}",
            routing.n_expert()
        );
        ensure_shape!(
            n <= self.max_tokens && n * k <= routing.max_pairs(),
            K,
            "{n} tokens exceed the routing buffers"
        );
        check_len(K, "x", x, n * h)?;
        check_len(K, "w", w, ne * h)?;
        if let Some(l) = opts.logits {
            check_len(K, "logits", l, n * ne)?;
        }
        to_u32(K, "tokens × hidden", n * h)?;
        to_u32(K, "experts × hidden", ne * h)?;
        to_u32(K, "partial logits", K_SEGMENTS * n * ne)?;
        if n == 0 {
            return Ok(());
        }
        let (partials, tile_counts) = match &self.path {
            Path::Fast {
                partials,
                tile_counts,
            } => (partials, tile_counts),
            Path::Fallback { logits, partials } => {
                let logits = opts.logits.unwrap_or(logits);
                let shape = GemmShape {
                    rows: n,
                    m: ne,
                    k: h,
                };
                matmul_f32(dev, x, w, logits, partials, shape)?;
                return routing.route(dev, logits, n, opts.renormalise);
            }
        };
        ensure_shape!(
            k <= MAX_TOP_K,
            K,
            "top-{k} exceeds the fast path's {MAX_TOP_K}"
        );
        let tm = tile_tokens(ne);
        let tiles = n.div_ceil(tm);
        let fused = match opts.mode {
            RouterMode::Auto | RouterMode::Split => false,
            RouterMode::Fused => true,
        };
        let flags = (FLAG_RENORMALISE * opts.renormalise as u32)
            | (FLAG_WRITE_LOGITS * opts.logits.is_some() as u32)
            | (FLAG_FUSED * fused as u32);
        let (nn, nex, hh, kk) = (n as u32, ne as u32, h as u32, k as u32);
        let grid = to_u32(K, "token tiles", tiles)?;
        let mut cfg = LaunchConfig::linear(grid, THREADS).with_shared(gemm_shared_bytes(ne));
        cfg.grid.1 = if fused { 1 } else { K_SEGMENTS as u32 };
        // Unwritten without FLAG_WRITE_LOGITS.
        let logits = opts.logits.unwrap_or(partials);
        let (ids, weights) = (routing.ids.output(), routing.weights.output());
        let (lo, counts) = (logits.output(), tile_counts.output());
        let (xi, wi, po) = (x.input(), w.input(), partials.output());
        if ne <= 128 {
            moe_router::moe_router_gemm_e128::launch(
                dev, cfg, xi, wi, po, ids, weights, lo, counts, nn, nex, hh, kk, flags,
            )?;
        } else {
            moe_router::moe_router_gemm_e256::launch(
                dev, cfg, xi, wi, po, ids, weights, lo, counts, nn, nex, hh, kk, flags,
            )?;
        }
        if !fused {
            let cfg = LaunchConfig::linear(grid, finish_threads(ne));
            let (ids, weights) = (routing.ids.output(), routing.weights.output());
            let (lo, counts, pi) = (logits.output(), tile_counts.output(), partials.input());
            if ne <= 128 {
                moe_router::moe_router_finish_e128::launch(
                    dev, cfg, pi, ids, weights, lo, counts, nn, nex, kk, flags,
                )?;
            } else {
                moe_router::moe_router_finish_e256::launch(
                    dev, cfg, pi, ids, weights, lo, counts, nn, nex, kk, flags,
                )?;
            }
        }
        moe_router::moe_group_scan_place::launch(
            dev,
            LaunchConfig::linear(grid, PLACE_THREADS),
            routing.ids.input(),
            tile_counts.input(),
            routing.sorted.output(),
            routing.row_of_pair.output(),
            routing.offsets.output(),
            routing.tiles.output(),
            routing.num_tiles.output(),
            to_u32(K, "pairs", n * k)?,
            nex,
            to_u32(K, "pairs per tile", tm * k)?,
        )
    }
}
