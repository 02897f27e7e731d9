//! MoE launch wrappers (kernels: gpu-kernels/src/moe.rs, and the grouped GEMMs in
//! gemm_wgmma.rs).

use super::gemm_wgmma::interleaved_rows;
use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, Input, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::device::WARP_SIZE;
use gpu_kernels::gemm_wgmma::{self, GROUPED_BM, GROUPED_BN, GROUPED_SHARED_BYTES, THREADS};
use gpu_kernels::moe::GROUP_TILE_ROWS;
use gpu_kernels::moe::{
    self, FLAG_RENORMALISE, FLAG_WRITE_LOGITS, GROUP_CHUNK_PAIRS, GROUP_WARPS, MAX_EXPERTS,
    ROUTER_THREADS, SCAN_THREADS,
};

/// Device state of one chunk's routing: top-k choices, the expert grouping and its tile table.
pub struct Routing {
    pub ids: Buffer<u32>,
    pub weights: Buffer<f32>,
    pub sorted: Buffer<u32>,
    pub row_of_pair: Buffer<u32>,
    pub offsets: Buffer<u32>,
    pub tiles: Buffer<u32>,
    pub num_tiles: Buffer<u32>,
    /// Per chunk of `GROUP_CHUNK_PAIRS` pairs and expert: the histogram, then the chunk's
    /// first row for that expert.
    chunk_rows: Buffer<u32>,
    max_pairs: usize,
    n_expert: usize,
    top_k: usize,
}

/// How router logits arrive for [`Routing::route`] (`gpu_kernels::moe::PartialLogits`):
/// `parts` partial sums per token, expert and K segment, for each of `segments` K segments,
/// laid out `[segments][tokens][parts][n_expert]` and added part by part, each part's segments
/// in index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialShape {
    pub parts: usize,
    pub segments: usize,
}

impl PartialShape {
    /// The logits themselves, `[tokens][n_expert]`.
    pub const LOGITS: PartialShape = PartialShape {
        parts: 1,
        segments: 1,
    };

    /// Partials per token and expert.
    pub fn per_logit(self) -> usize {
        self.parts * self.segments
    }
}

/// What one routing call does besides routing.
#[derive(Clone, Copy, Default)]
pub struct RouteOptions<'a> {
    /// Rescale each token's top-k weights to sum 1.
    pub renormalise: bool,
    /// Also write the router logits `[n][n_expert]` here (tests, debugging).
    pub logits: Option<&'a Buffer<f32>>,
}

/// The expert part of one chunk: `tokens` rows of `hidden` in and out, experts `ff` wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeShape {
    pub tokens: usize,
    pub hidden: usize,
    pub ff: usize,
}

impl MoeShape {
    /// Checks the shape against the routing buffers; `(hidden, ff)` as u32.
    fn validate(&self, kernel: &'static str, routing: &Routing) -> Result<(u32, u32)> {
        let MoeShape { tokens, hidden, ff } = *self;
        ensure_shape!(
            hidden > 0 && ff > 0,
            kernel,
            "hidden {hidden} and ff {ff} must be positive"
        );
        ensure_shape!(
            tokens * routing.top_k <= routing.max_pairs,
            kernel,
            "{tokens} tokens exceed the routing buffers"
        );
        let pairs = tokens * routing.top_k;
        to_u32(kernel, "pairs × hidden", pairs * hidden)?;
        to_u32(kernel, "pairs × ff", pairs * ff)?;
        to_u32(kernel, "expert weights", routing.n_expert * ff * hidden)?;
        Ok((hidden as u32, ff as u32))
    }

    fn pairs(&self, routing: &Routing) -> usize {
        self.tokens * routing.top_k
    }
}

/// Tiles of the grouped GEMM in the worst case: Σ⌈count_e / T⌉ ≤ ⌈pairs / T⌉ + experts.
fn max_tiles(pairs: usize, n_expert: usize) -> usize {
    pairs.div_ceil(GROUP_TILE_ROWS) + n_expert
}

impl Routing {
    /// Buffers for up to `max_tokens` tokens.
    pub fn new(dev: &Device, max_tokens: usize, n_expert: usize, top_k: usize) -> Result<Self> {
        ensure_shape!(
            (1..=MAX_EXPERTS).contains(&n_expert)
                && (1..=n_expert.min(WARP_SIZE as usize)).contains(&top_k),
            "moe_router_topk",
            "{n_expert} experts with top-{top_k} (at most {MAX_EXPERTS} experts, top-{WARP_SIZE})"
        );
        let pairs = max_tokens * top_k;
        Ok(Routing {
            ids: dev.alloc(pairs, "MoE expert ids")?,
            weights: dev.alloc(pairs, "MoE weights")?,
            sorted: dev.alloc(pairs, "MoE grouped pairs")?,
            row_of_pair: dev.alloc(pairs, "MoE pair rows")?,
            offsets: dev.alloc(n_expert + 1, "MoE offsets")?,
            tiles: dev.alloc(2 * max_tiles(pairs, n_expert), "MoE tile table")?,
            num_tiles: dev.alloc(1, "MoE tile count")?,
            chunk_rows: dev.alloc(
                pairs.div_ceil(GROUP_CHUNK_PAIRS).max(1) * n_expert,
                "MoE per-chunk expert rows",
            )?,
            max_pairs: pairs,
            n_expert,
            top_k,
        })
    }

    /// Experts of the model this routing is for.
    pub fn n_expert(&self) -> usize {
        self.n_expert
    }

    /// Experts each token chooses.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Pairs the buffers hold (tokens × top-k).
    pub fn max_pairs(&self) -> usize {
        self.max_pairs
    }

    /// Routes `n` tokens from their router logits, given as partial logits (`shape`; see
    /// [`PartialShape`]), and groups the pairs.
    pub fn route(
        &self,
        dev: &Device,
        partials: &Buffer<f32>,
        shape: PartialShape,
        n: usize,
        opts: RouteOptions<'_>,
    ) -> Result<()> {
        const K: &str = "moe_router_topk";
        let (ne, k) = (self.n_expert, self.top_k);
        ensure_shape!(
            n * k <= self.max_pairs && shape.per_logit() > 0,
            K,
            "{n} tokens exceed the routing buffers (or no partials: {shape:?})"
        );
        check_len(K, "partial logits", partials, n * shape.per_logit() * ne)?;
        if let Some(l) = opts.logits {
            check_len(K, "logits", l, n * ne)?;
        }
        to_u32(K, "partial logits", n * shape.per_logit() * ne)?;
        if n == 0 {
            return Ok(());
        }
        let tokens_per_block = (ROUTER_THREADS / WARP_SIZE) as usize;
        let cfg = LaunchConfig::linear(
            to_u32(K, "tokens", n.div_ceil(tokens_per_block))?,
            ROUTER_THREADS,
        );
        let (nn, nex, kk) = (to_u32(K, "tokens", n)?, ne as u32, k as u32);
        let (ids, weights) = (self.ids.output(), self.weights.output());
        let flags = (FLAG_RENORMALISE * opts.renormalise as u32)
            | (FLAG_WRITE_LOGITS * opts.logits.is_some() as u32);
        // Unwritten without FLAG_WRITE_LOGITS.
        let logits = opts.logits.unwrap_or(partials).output();
        let (pi, parts, segments) = (partials.input(), shape.parts as u32, shape.segments as u32);
        moe::moe_router_topk::launch(
            dev, cfg, pi, ids, weights, logits, nn, nex, kk, parts, segments, flags,
        )?;

        let pairs = to_u32(K, "pairs", n * k)?;
        let chunks = (n * k).div_ceil(GROUP_CHUNK_PAIRS);
        let walk = LaunchConfig::linear(
            to_u32(K, "chunks", chunks.div_ceil(GROUP_WARPS))?,
            GROUP_WARPS as u32 * WARP_SIZE,
        );
        let rows = &self.chunk_rows;
        moe::moe_group_count::launch(dev, walk, self.ids.input(), rows.output(), pairs, nex)?;
        moe::moe_group_scan::launch(
            dev,
            LaunchConfig::linear(1, SCAN_THREADS),
            rows.output(),
            self.offsets.output(),
            self.tiles.output(),
            self.num_tiles.output(),
            chunks as u32,
            nex,
        )?;
        moe::moe_group_place::launch(
            dev,
            walk,
            self.ids.input(),
            rows.input(),
            self.sorted.output(),
            self.row_of_pair.output(),
            pairs,
            nex,
        )
    }

    /// The grouped GEMMs' input: `xg[row] = x[token(row)]`, bf16 rows of `hidden` in expert
    /// order (`x`: `[≥ tokens][hidden]`, `xg`: `[≥ pairs][hidden]`).
    pub fn gather(
        &self,
        dev: &Device,
        x: &TmaMatrix,
        xg: &TmaMatrix,
        shape: MoeShape,
    ) -> Result<()> {
        const K: &str = "moe_gather_rows";
        let (hidden, _) = shape.validate(K, self)?;
        let pairs = shape.pairs(self);
        ensure_shape!(
            shape.hidden.is_multiple_of(8),
            K,
            "hidden {} must be a multiple of 8",
            shape.hidden
        );
        x.check(K, "x", shape.tokens, shape.hidden)?;
        xg.check(K, "xg", pairs, shape.hidden)?;
        if pairs == 0 {
            return Ok(());
        }
        let n_rows = to_u32(K, "pairs", pairs)?;
        let blocks = n_rows.div_ceil(moe::GATHER_ROWS as u32);
        // A thread per 16-byte piece of a row, up to 256.
        let threads = (shape.hidden / 8).clamp(32, 256) as u32;
        let cfg = LaunchConfig::linear(blocks, threads);
        let top_k = self.top_k as u32;
        let (x, sorted, xg) = (x.data().input(), self.sorted.input(), xg.data().output());
        moe::moe_gather_rows::launch(dev, cfg, x, sorted, xg, top_k, hidden, n_rows)
    }

    /// Expert gate|up + SwiGLU over the grouped rows: `h[row] = swiglu(xg[row])` with the
    /// row's expert; `w_gate_up`: every expert's interleaved gate|up matrix
    /// (`gemm_wgmma::interleave_gate_up`) stacked, `[n_expert · interleaved_rows(ff)][hidden]`;
    /// `h`: `[≥ pairs][ff]`.
    pub fn experts_swiglu(
        &self,
        dev: &Device,
        xg: &TmaMatrix,
        w_gate_up: &TmaMatrix,
        h: &TmaMatrix,
        shape: MoeShape,
    ) -> Result<()> {
        const K: &str = "moe_gemm_wgmma_swiglu";
        let (hidden, ff) = shape.validate(K, self)?;
        let pairs = shape.pairs(self);
        xg.check(K, "xg", pairs, shape.hidden)?;
        check_grouped_operand(K, "xg", xg)?;
        w_gate_up.check(
            K,
            "w_gate_up",
            self.n_expert * interleaved_rows(shape.ff),
            shape.hidden,
        )?;
        h.check(K, "h", pairs, shape.ff)?;
        if pairs == 0 {
            return Ok(());
        }
        let cfg = self.grouped_cfg(dev, K, pairs, interleaved_rows(shape.ff))?;
        let (tiles, num_tiles, offsets) = self.tile_table();
        gemm_wgmma::moe_gemm_wgmma_swiglu::launch(
            dev,
            cfg,
            xg.map(),
            w_gate_up.map(),
            h.data().output(),
            tiles,
            num_tiles,
            offsets,
            ff,
            hidden,
        )
    }

    /// Expert down projections over the grouped rows: `out[row] = bf16(h[row] · w_down[e]ᵀ)`
    /// (f32 accumulation, one rounding); `w_down`: `[n_expert · hidden][ff]`; `out`:
    /// `[pairs][hidden]` bf16, what [`Routing::combine`] reads.
    pub fn experts_down(
        &self,
        dev: &Device,
        h: &TmaMatrix,
        w_down: &TmaMatrix,
        out: &Buffer<u16>,
        shape: MoeShape,
    ) -> Result<()> {
        const K: &str = "moe_gemm_wgmma_bf16";
        let (hidden, ff) = shape.validate(K, self)?;
        let pairs = shape.pairs(self);
        h.check(K, "h", pairs, shape.ff)?;
        check_grouped_operand(K, "h", h)?;
        w_down.check(K, "w_down", self.n_expert * shape.hidden, shape.ff)?;
        check_len(K, "out", out, pairs * shape.hidden)?;
        if pairs == 0 {
            return Ok(());
        }
        let cfg = self.grouped_cfg(dev, K, pairs, shape.hidden)?;
        let (tiles, num_tiles, offsets) = self.tile_table();
        let (h, w, out) = (h.map(), w_down.map(), out.output());
        gemm_wgmma::moe_gemm_wgmma_bf16::launch(
            dev, cfg, h, w, out, tiles, num_tiles, offsets, hidden, ff,
        )
    }

    /// A zero-filled `[rows][cols]` matrix the grouped GEMMs can read as their A operand
    /// (`xg` of [`Routing::experts_swiglu`], `h` of [`Routing::experts_down`]): its map's box
    /// is one `GROUPED_BM`-row tile.
    pub fn grouped_operand(
        dev: &Device,
        rows: usize,
        cols: usize,
        what: &str,
    ) -> Result<TmaMatrix> {
        dev.tma_zeros_boxed(rows, cols, GROUPED_BM as u32, what)
    }

    fn tile_table(&self) -> (Input<'_, u32>, Input<'_, u32>, Input<'_, u32>) {
        (
            self.tiles.input(),
            self.num_tiles.input(),
            self.offsets.input(),
        )
    }

    /// A persistent launch: a block per multiprocessor, at most one per tile of the
    /// worst-case table (`GROUPED_BN`-column blocks of `m` × row tiles).
    fn grouped_cfg(
        &self,
        dev: &Device,
        k: &'static str,
        pairs: usize,
        m: usize,
    ) -> Result<LaunchConfig> {
        let tiles = m.div_ceil(GROUPED_BN) * max_tiles(pairs, self.n_expert);
        super::persistent(dev, k, tiles, THREADS, GROUPED_SHARED_BYTES)
    }

    /// The weighted scatter-reduce into the residual stream `y` (`[tokens][hidden]`) of the
    /// bf16 expert outputs (`[pairs][hidden]`, from [`Routing::experts_down`]), shared expert
    /// last: `shared` = (its f32 output `[tokens][hidden]`, its gate logits `[tokens]`).
    pub fn combine(
        &self,
        dev: &Device,
        expert_out: &Buffer<u16>,
        shared: Option<(&Buffer<f32>, &Buffer<f32>)>,
        y: &Buffer<f32>,
        shape: MoeShape,
    ) -> Result<()> {
        const K: &str = "moe_combine";
        let (hidden, _) = shape.validate(K, self)?;
        ensure_shape!(
            shape.hidden.is_multiple_of(moe::COMBINE_WIDTH),
            K,
            "hidden {} is not a multiple of {}",
            shape.hidden,
            moe::COMBINE_WIDTH
        );
        let n = shape.tokens;
        check_len(
            K,
            "expert_out",
            expert_out,
            shape.pairs(self) * shape.hidden,
        )?;
        check_len(K, "y", y, n * shape.hidden)?;
        if let Some((out, gate)) = shared {
            check_len(K, "shared_out", out, n * shape.hidden)?;
            check_len(K, "shared_gate", gate, n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let (s_out, s_gate) = shared.unwrap_or((y, y)); // unread without it
        let cfg = LaunchConfig::covering(n * shape.hidden / moe::COMBINE_WIDTH, 256);
        moe::moe_combine::launch(
            dev,
            cfg,
            expert_out.input(),
            self.row_of_pair.input(),
            self.weights.input(),
            s_out.input(),
            s_gate.input(),
            y.output(),
            n as u32,
            hidden,
            self.top_k as u32,
            shared.is_some() as u32,
        )
    }
}

/// The grouped GEMMs load `GROUPED_BM` rows of their A operand per tile: a map with taller boxes
/// would bring (and count) rows the kernel does not expect.
fn check_grouped_operand(kernel: &'static str, what: &str, m: &TmaMatrix) -> Result<()> {
    ensure_shape!(
        m.box_rows() == GROUPED_BM as u32,
        kernel,
        "{what} is read in boxes of {} rows; the grouped GEMMs need {GROUPED_BM} (make it with Routing::grouped_operand)",
        m.box_rows()
    );
    Ok(())
}
