//! The MoE routing stage's launch wrapper (kernels: gpu-kernels/src/moe_router.rs, and the
//! tensor-core GEMM of gemm_wgmma.rs): router logits from the bf16 normed rows and the f32
//! router weights held as three exact bf16 parts ([`RouterWeights`]), softmax and top-k, and
//! the grouping by expert, written into a [`Routing`].
//!
//! The logits: one `gemm_wgmma_f32_segments` launch writes the partial logits
//! `[segments][tokens][PARTS][n_expert]` (x · each part of W over each `SEGMENT_K` columns of
//! the hidden state, f32 accumulation of exact bf16 products; a block per segment, so few
//! tokens still fill the GPU); the routing kernels add them part by part, smallest first.
//! Up to `FAST_MAX_EXPERTS` experts the finish kernel adds and routes and one scan-and-place
//! launch groups (three launches in all); above that, the generic [`Routing::route`] reads
//! the same partials (five launches). Either way the launch count is fixed by the model, not
//! by the number of tokens.

use super::convert::f32_to_bf16x3;
use super::gemm_wgmma::matmul_segments;
use super::moe::{PartialShape, RouteOptions, Routing};
use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::gemm_wgmma::{BK, HALF_BN};
use gpu_kernels::moe::{FLAG_RENORMALISE, FLAG_WRITE_LOGITS};
use gpu_kernels::moe_router::{
    self, FAST_MAX_EXPERTS, FINISH_THREADS, FINISH_TOKENS, MAX_TOP_K, PARTS, PLACE_THREADS,
    SEGMENT_K, TILE_TOKENS,
};

/// A router weight `W [n_expert][hidden]` (f32) as the GEMM reads it: `PARTS` bf16 matrices
/// whose sum is exactly `W` (`float::split_bf16x3`: lo, mid, hi), stacked as
/// `[PARTS · n_expert][hidden]`, part-major (row `p · n_expert + e` is part `p` of expert
/// `e`), so the GEMM's output row is the `[PARTS][n_expert]` partial logits of a token. Read
/// through maps in boxes of `BN` and of `HALF_BN` rows, for the GEMM's two tilings.
pub struct RouterWeights {
    parts: TmaMatrix,
    n_expert: usize,
}

impl RouterWeights {
    /// Splits `w` (`[n_expert][hidden]` f32, on `dev`) into its parts on the device.
    pub fn new(dev: &Device, w: &Buffer<f32>, n_expert: usize, hidden: usize) -> Result<Self> {
        ensure_shape!(
            n_expert > 0 && hidden > 0,
            "moe_router",
            "{n_expert} experts and hidden {hidden} must be positive"
        );
        let n = n_expert * hidden;
        check_len("moe_router", "w", w, n)?;
        let data = dev.alloc::<u16>(PARTS * n, "router weights (bf16 parts)")?;
        f32_to_bf16x3(dev, w, &data, n)?;
        Ok(RouterWeights {
            parts: dev
                .tma_matrix(data, PARTS * n_expert, hidden)?
                .with_second_box(dev, HALF_BN as u32)?,
            n_expert,
        })
    }

    pub fn n_expert(&self) -> usize {
        self.n_expert
    }

    pub fn hidden(&self) -> usize {
        self.parts.cols()
    }

    /// The stacked parts, `[PARTS · n_expert][hidden]`.
    pub fn parts(&self) -> &TmaMatrix {
        &self.parts
    }
}

/// Overrides the router GEMM's K segment width (a multiple of 64; one at least `hidden` wide
/// makes a single segment, the router before segments): a measuring knob, as `KILN_PDL`.
/// A value that is not a positive multiple of 64 fails the router's construction.
pub const SEGMENT_K_VAR: &str = "KILN_ROUTER_SEGMENT_K";

/// The routing stage of one model's MoE layers, for up to `max_tokens` tokens at once.
pub struct Router {
    n_expert: usize,
    max_tokens: usize,
    /// The GEMM's K segments: `SEGMENT_K` hidden columns each (tests choose narrower ones).
    seg_k: usize,
    shape: PartialShape,
    /// Partial logits `[segments][tokens][PARTS][n_expert]`, the GEMM's output.
    partials: Buffer<f32>,
    /// Per tile of `TILE_TOKENS` tokens and expert, the tile's pairs (fast path only): zero
    /// between calls (allocated so; the scan-and-place kernel leaves them so).
    tile_counts: Option<Buffer<u32>>,
    /// The scan-and-place blocks that have read the counts (0 between calls).
    blocks_done: Buffer<u32>,
}

impl Router {
    /// A router for `n_expert` experts over a hidden state of `hidden`, in K segments of
    /// `SEGMENT_K` columns (or `KILN_ROUTER_SEGMENT_K`'s, for measuring: see [`SEGMENT_K_VAR`]).
    pub fn new(dev: &Device, max_tokens: usize, n_expert: usize, hidden: usize) -> Result<Self> {
        let seg_k = match std::env::var(SEGMENT_K_VAR) {
            Ok(v) => v.trim().parse().unwrap_or(0),
            Err(_) => SEGMENT_K,
        };
        Self::with_segment_k(dev, (max_tokens, n_expert, hidden), seg_k)
    }

    /// [`Router::new`] with K segments of `seg_k` hidden columns (a multiple of 64), so small
    /// test models exercise several segments.
    pub fn with_segment_k(
        dev: &Device,
        (max_tokens, n_expert, hidden): (usize, usize, usize),
        seg_k: usize,
    ) -> Result<Self> {
        ensure_shape!(
            n_expert > 0 && hidden > 0,
            "moe_router",
            "{n_expert} experts and hidden {hidden} must be positive"
        );
        ensure_shape!(
            seg_k > 0 && seg_k.is_multiple_of(BK),
            "moe_router",
            "the K segment {seg_k} must be a positive multiple of {BK}"
        );
        let tile_counts = if n_expert <= FAST_MAX_EXPERTS {
            let tiles = max_tokens.div_ceil(TILE_TOKENS).max(1);
            Some(dev.alloc(tiles * n_expert, "router per-tile expert counts")?)
        } else {
            None
        };
        let shape = PartialShape {
            parts: PARTS,
            segments: hidden.div_ceil(seg_k),
        };
        let len = max_tokens * shape.per_logit() * n_expert;
        Ok(Router {
            n_expert,
            max_tokens,
            seg_k,
            shape,
            partials: dev.alloc(len, "router partial logits")?,
            tile_counts,
            blocks_done: dev.alloc(1, "router scan-and-place ticket")?,
        })
    }

    /// Whether this router runs the fast path (else the GEMM + [`Routing::route`]).
    pub fn is_fast(&self) -> bool {
        self.tile_counts.is_some()
    }

    /// Routes `n` tokens: `x` `[≥ n][hidden]` (bf16), into `routing` (ids, weights, grouping,
    /// tile table).
    pub fn route(
        &self,
        dev: &Device,
        x: &TmaMatrix,
        w: &RouterWeights,
        routing: &Routing,
        n: usize,
        opts: RouteOptions<'_>,
    ) -> Result<()> {
        const K: &str = "moe_router";
        let (ne, k) = (self.n_expert, routing.top_k());
        ensure_shape!(
            routing.n_expert() == ne && w.n_expert() == ne,
            K,
            "the routing is for {} experts, the weights for {}, the router for {ne}",
            routing.n_expert(),
            w.n_expert()
        );
        ensure_shape!(
            n <= self.max_tokens && n * k <= routing.max_pairs(),
            K,
            "{n} tokens exceed the routing buffers"
        );
        x.check(K, "x", n, w.hidden())?;
        ensure_shape!(
            w.hidden().div_ceil(self.seg_k) == self.shape.segments,
            K,
            "the router was made for {} segments of {}, the weights' hidden is {}",
            self.shape.segments,
            self.seg_k,
            w.hidden()
        );
        if let Some(l) = opts.logits {
            check_len(K, "logits", l, n * ne)?;
        }
        if n == 0 {
            return Ok(());
        }
        // The planes of an `n`-token call are `n` rows apart (`[segments][n][PARTS][n_expert]`).
        matmul_segments(dev, x, &w.parts, &self.partials, n, self.seg_k)?;
        let Some(tile_counts) = &self.tile_counts else {
            return routing.route(dev, &self.partials, self.shape, n, opts);
        };
        ensure_shape!(
            k <= MAX_TOP_K,
            K,
            "top-{k} exceeds the fast path's {MAX_TOP_K}"
        );
        let flags = (FLAG_RENORMALISE * opts.renormalise as u32)
            | (FLAG_WRITE_LOGITS * opts.logits.is_some() as u32);
        let (nn, nex, kk) = (to_u32(K, "tokens", n)?, ne as u32, k as u32);
        let segments = self.shape.segments as u32;
        // Everything both launches need is checked before the first: the finish kernel's
        // counts are zeroed again only by the scan-and-place kernel.
        let tiles = to_u32(K, "token tiles", n.div_ceil(TILE_TOKENS))?;
        let (pairs, tile_pairs) = (to_u32(K, "pairs", n * k)?, (TILE_TOKENS * k) as u32);
        let finish_blocks = to_u32(K, "finish blocks", n.div_ceil(FINISH_TOKENS))?;
        let cfg = LaunchConfig::linear(finish_blocks, FINISH_THREADS);
        // Unwritten without FLAG_WRITE_LOGITS.
        let logits = opts.logits.unwrap_or(&self.partials);
        let (ids, weights) = (routing.ids.output(), routing.weights.output());
        let (pi, lo, counts) = (self.partials.input(), logits.output(), tile_counts.output());
        if ne <= 128 {
            moe_router::moe_router_finish_e128::launch(
                dev, cfg, pi, ids, weights, lo, counts, nn, nex, kk, segments, flags,
            )?;
        } else {
            moe_router::moe_router_finish_e256::launch(
                dev, cfg, pi, ids, weights, lo, counts, nn, nex, kk, segments, flags,
            )?;
        }
        moe_router::moe_group_scan_place::launch(
            dev,
            LaunchConfig::linear(tiles, PLACE_THREADS),
            routing.ids.input(),
            tile_counts.output(),
            self.blocks_done.output(),
            routing.sorted.output(),
            routing.row_of_pair.output(),
            routing.offsets.output(),
            routing.tiles.output(),
            routing.num_tiles.output(),
            pairs,
            nex,
            tile_pairs,
        )
    }
}
