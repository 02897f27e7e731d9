//! MoE launch wrappers (kernels: gpu-kernels/src/moe.rs and the grouped GEMMs in gemm.rs).

use super::{check_len, to_u32};
use crate::gpu::launch::launch;
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::gemm::{MMA_THREADS, TILE_M, TILE_N};
use gpu_kernels::moe::{GROUP_THREADS, MAX_EXPERTS};

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
        launch!(
            dev,
            moe::moe_router_topk,
            cfg,
            logits.input(),
            self.ids.output(),
            self.weights.output(),
            nn,
            nex,
            kk,
            renormalise as u32
        )?;
        let group = LaunchConfig::linear(1, GROUP_THREADS);
        let pairs = to_u32(K, "pairs", n * k)?;
        launch!(
            dev,
            moe::moe_group,
            group,
            self.ids.input(),
            self.sorted.output(),
            self.row_of_pair.output(),
            self.offsets.output(),
            self.tiles.output(),
            self.num_tiles.output(),
            pairs,
            nex
        )
    }

    /// Expert gate/up + SwiGLU over the grouped rows: `h[row] = swiglu(x[token(row)])` with
    /// the row's expert; `w_*`: `[n_expert][ff][hidden]` bf16; `h`: `[n·k][ff]`.
    #[allow(clippy::too_many_arguments)]
    pub fn experts_gated(
        &self,
        dev: &Device,
        x: &Buffer<f32>,
        w_gate: &Buffer<u16>,
        w_up: &Buffer<u16>,
        h: &Buffer<f32>,
        n: usize,
        ff: usize,
        hidden: usize,
    ) -> Result<()> {
        const K: &str = "moe_gemm_gated_bf16";
        let pairs = n * self.top_k;
        check_len(K, "x", x, n * hidden)?;
        check_len(K, "w_gate", w_gate, self.n_expert * ff * hidden)?;
        check_len(K, "w_up", w_up, self.n_expert * ff * hidden)?;
        check_len(K, "h", h, pairs * ff)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.grouped_cfg(K, pairs, ff)?;
        let (kk, m, kd) = (
            self.top_k as u32,
            to_u32(K, "ff", ff)?,
            to_u32(K, "hidden", hidden)?,
        );
        launch!(
            dev,
            gemm::moe_gemm_gated_bf16,
            cfg,
            x.input(),
            w_gate.input(),
            w_up.input(),
            h.output(),
            self.sorted.input(),
            self.tiles.input(),
            self.num_tiles.input(),
            self.offsets.input(),
            kk,
            m,
            kd
        )
    }

    /// Expert down projections over the grouped rows: `out[row] = h[row] · w_down[e]ᵀ`;
    /// `w_down`: `[n_expert][hidden][ff]`; `out`: `[n·k][hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub fn experts_down(
        &self,
        dev: &Device,
        h: &Buffer<f32>,
        w_down: &Buffer<u16>,
        out: &Buffer<f32>,
        n: usize,
        ff: usize,
        hidden: usize,
    ) -> Result<()> {
        const K: &str = "moe_gemm_bf16";
        let pairs = n * self.top_k;
        check_len(K, "h", h, pairs * ff)?;
        check_len(K, "w_down", w_down, self.n_expert * hidden * ff)?;
        check_len(K, "out", out, pairs * hidden)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.grouped_cfg(K, pairs, hidden)?;
        let (m, kd) = (to_u32(K, "hidden", hidden)?, to_u32(K, "ff", ff)?);
        launch!(
            dev,
            gemm::moe_gemm_bf16,
            cfg,
            h.input(),
            w_down.input(),
            out.output(),
            self.tiles.input(),
            self.num_tiles.input(),
            self.offsets.input(),
            m,
            kd
        )
    }

    fn grouped_cfg(&self, k: &'static str, pairs: usize, m: usize) -> Result<LaunchConfig> {
        let mut cfg = LaunchConfig::linear(to_u32(k, "m tiles", m.div_ceil(TILE_N))?, MMA_THREADS);
        cfg.grid.1 = to_u32(k, "tiles", max_tiles(pairs, self.n_expert))?;
        ensure_shape!(cfg.grid.1 <= 65535, k, "{pairs} pairs exceed one launch");
        Ok(cfg)
    }

    /// The weighted scatter-reduce into the residual stream `y` (`[n][hidden]`), shared expert
    /// last: `shared` = (its output `[n][hidden]`, its gate logits `[n]`).
    pub fn combine(
        &self,
        dev: &Device,
        expert_out: &Buffer<f32>,
        shared: Option<(&Buffer<f32>, &Buffer<f32>)>,
        y: &Buffer<f32>,
        n: usize,
        hidden: usize,
    ) -> Result<()> {
        const K: &str = "moe_combine";
        check_len(K, "expert_out", expert_out, n * self.top_k * hidden)?;
        check_len(K, "y", y, n * hidden)?;
        if let Some((out, gate)) = shared {
            check_len(K, "shared_out", out, n * hidden)?;
            check_len(K, "shared_gate", gate, n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let (s_out, s_gate) = shared.unwrap_or((expert_out, expert_out)); // unread without it
        let cfg = LaunchConfig::covering(n * hidden, 256);
        // n·hidden fitting in u32 bounds both factors.
        to_u32(K, "n·hidden", n * hidden)?;
        let (nn, hh, kk) = (n as u32, hidden as u32, self.top_k as u32);
        launch!(
            dev,
            moe::moe_combine,
            cfg,
            expert_out.input(),
            self.row_of_pair.input(),
            self.weights.input(),
            s_out.input(),
            s_gate.input(),
            y.output(),
            nn,
            hh,
            kk,
            shared.is_some() as u32
        )
    }
}
