//! MoE launch wrappers (kernels: gpu-kernels/src/moe.rs and the grouped GEMMs in gemm.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::gemm::{self, MMA_THREADS, TILE_M, TILE_N};
use gpu_kernels::moe::{self, GROUP_THREADS, MAX_EXPERTS};

/// Device state of one chunk's routing: top-k choices, the expert grouping and its tile table.
pub struct Routing {
    pub ids: Buffer<u32>,
    pub weights: Buffer<f32>,
    pub sorted: Buffer<u32>,
    pub row_of_pair: Buffer<u32>,
    pub offsets: Buffer<u32>,
    pub tiles: Buffer<u32>,
    pub num_tiles: Buffer<u32>,
    max_pairs: usize,
    n_expert: usize,
    top_k: usize,
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

/// Tiles of the grouped GEMM in the worst case: Σ⌈count_e / TILE_M⌉ ≤ ⌈pairs / TILE_M⌉ + experts.
fn max_tiles(pairs: usize, n_expert: usize) -> usize {
    pairs.div_ceil(TILE_M) + n_expert
}

impl Routing {
    /// Buffers for up to `max_tokens` tokens.
    pub fn new(dev: &Device, max_tokens: usize, n_expert: usize, top_k: usize) -> Result<Self> {
        ensure_shape!(
            (1..=MAX_EXPERTS).contains(&n_expert) && (1..=n_expert).contains(&top_k),
            "moe_group",
            "{n_expert} experts with top-{top_k} (at most {MAX_EXPERTS} experts)"
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
            max_pairs: pairs,
            n_expert,
            top_k,
        })
    }

    /// Routes `n` tokens from their router logits (`[n][n_expert]`) and groups the pairs.
    pub fn route(
        &self,
        dev: &Device,
        logits: &Buffer<f32>,
        n: usize,
        renormalise: bool,
    ) -> Result<()> {
        const K: &str = "moe_router_topk";
        let (ne, k) = (self.n_expert, self.top_k);
        ensure_shape!(
            n * k <= self.max_pairs,
            K,
            "{n} tokens exceed the routing buffers"
        );
        check_len(K, "logits", logits, n * ne)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig::covering(n, 128);
        let (nn, nex, kk) = (to_u32(K, "tokens", n)?, ne as u32, k as u32);
        let (ids, weights) = (self.ids.output(), self.weights.output());
        let renorm = renormalise as u32;
        moe::moe_router_topk::launch(dev, cfg, logits.input(), ids, weights, nn, nex, kk, renorm)?;
        let group = LaunchConfig::linear(1, GROUP_THREADS);
        let pairs = to_u32(K, "pairs", n * k)?;
        moe::moe_group::launch(
            dev,
            group,
            self.ids.input(),
            self.sorted.output(),
            self.row_of_pair.output(),
            self.offsets.output(),
            self.tiles.output(),
            self.num_tiles.output(),
            pairs,
            nex,
        )
    }

    /// Expert gate/up + SwiGLU over the grouped rows: `h[row] = swiglu(x[token(row)])` with
    /// the row's expert; `w_*`: `[n_expert][ff][hidden]` bf16; `h`: `[tokens·k][ff]`.
    pub fn experts_gated(
        &self,
        dev: &Device,
        x: &Buffer<f32>,
        w_gate: &Buffer<u16>,
        w_up: &Buffer<u16>,
        h: &Buffer<f32>,
        shape: MoeShape,
    ) -> Result<()> {
        const K: &str = "moe_gemm_gated_bf16";
        let (hidden, ff) = shape.validate(K, self)?;
        let pairs = shape.pairs(self);
        let experts = self.n_expert * shape.ff * shape.hidden;
        check_len(K, "x", x, shape.tokens * shape.hidden)?;
        check_len(K, "w_gate", w_gate, experts)?;
        check_len(K, "w_up", w_up, experts)?;
        check_len(K, "h", h, pairs * shape.ff)?;
        if pairs == 0 {
            return Ok(());
        }
        let cfg = self.grouped_cfg(K, pairs, shape.ff)?;
        gemm::moe_gemm_gated_bf16::launch(
            dev,
            cfg,
            x.input(),
            w_gate.input(),
            w_up.input(),
            h.output(),
            self.sorted.input(),
            self.tiles.input(),
            self.num_tiles.input(),
            self.offsets.input(),
            self.top_k as u32,
            ff,
            hidden,
        )
    }

    /// Expert down projections over the grouped rows: `out[row] = h[row] · w_down[e]ᵀ`;
    /// `w_down`: `[n_expert][hidden][ff]`; `out`: `[tokens·k][hidden]`.
    pub fn experts_down(
        &self,
        dev: &Device,
        h: &Buffer<f32>,
        w_down: &Buffer<u16>,
        out: &Buffer<f32>,
        shape: MoeShape,
    ) -> Result<()> {
        const K: &str = "moe_gemm_bf16";
        let (hidden, ff) = shape.validate(K, self)?;
        let pairs = shape.pairs(self);
        check_len(K, "h", h, pairs * shape.ff)?;
        check_len(K, "w_down", w_down, self.n_expert * shape.hidden * shape.ff)?;
        check_len(K, "out", out, pairs * shape.hidden)?;
        if pairs == 0 {
            return Ok(());
        }
        let cfg = self.grouped_cfg(K, pairs, shape.hidden)?;
        let (tiles, num_tiles, offsets) = (
            self.tiles.input(),
            self.num_tiles.input(),
            self.offsets.input(),
        );
        let (h, w, out) = (h.input(), w_down.input(), out.output());
        gemm::moe_gemm_bf16::launch(dev, cfg, h, w, out, tiles, num_tiles, offsets, hidden, ff)
    }

    fn grouped_cfg(&self, k: &'static str, pairs: usize, m: usize) -> Result<LaunchConfig> {
        let mut cfg = LaunchConfig::linear(to_u32(k, "m tiles", m.div_ceil(TILE_N))?, MMA_THREADS);
        cfg.grid.1 = to_u32(k, "tiles", max_tiles(pairs, self.n_expert))?;
        ensure_shape!(cfg.grid.1 <= 65535, k, "{pairs} pairs exceed one launch");
        Ok(cfg)
    }

    /// The weighted scatter-reduce into the residual stream `y` (`[tokens][hidden]`), shared
    /// expert last: `shared` = (its output `[tokens][hidden]`, its gate logits `[tokens]`).
    pub fn combine(
        &self,
        dev: &Device,
        expert_out: &Buffer<f32>,
        shared: Option<(&Buffer<f32>, &Buffer<f32>)>,
        y: &Buffer<f32>,
        shape: MoeShape,
    ) -> Result<()> {
        const K: &str = "moe_combine";
        let (hidden, _) = shape.validate(K, self)?;
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
        let (s_out, s_gate) = shared.unwrap_or((expert_out, expert_out)); // unread without it
        let cfg = LaunchConfig::covering(n * shape.hidden, 256);
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
