//! Device buffers a prompt needs: the KV cache for its whole length and per-chunk activations
//! sized for the largest chunk. Allocated once per prompt, reused by every chunk and layer.

use crate::gpu::ops::attention::{AttentionShape, KvCache};
use crate::gpu::ops::moe::Routing;
use crate::gpu::ops::rope::rope_inv_freq;
use crate::gpu::{Buffer, Device, GpuError, Result};
use crate::model::ModelConfig;

pub(super) struct Scratch {
    /// One K/V cache per layer, for the whole prompt.
    pub kv: Vec<KvCache>,
    pub x: Buffer<f32>,
    pub xn: Buffer<f32>,
    pub q: Buffer<f32>,
    pub k: Buffer<f32>,
    pub v: Buffer<f32>,
    pub attn: Buffer<f32>,
    pub scores: Buffer<f32>,
    pub wave_len: usize,
    pub ffn_h: Buffer<f32>,
    pub expert_out: Buffer<f32>,
    pub router_logits: Buffer<f32>,
    pub shared_h: Buffer<f32>,
    pub shared_out: Buffer<f32>,
    pub shared_gate: Buffer<f32>,
    pub routing: Option<Routing>,
    pub tokens: Buffer<u32>,
    pub positions: Buffer<u32>,
    pub inv_freq: Buffer<f32>,
    pub final_rows: Buffer<f32>,
    pub logits: Buffer<f32>,
}

impl Scratch {
    /// Buffers for a prompt of `capacity` tokens processed in chunks of at most `max_chunk`,
    /// with attention scores limited to `wave_budget` bytes, and `logit_rows` rows of logits.
    pub fn new(
        dev: &Device,
        cfg: &ModelConfig,
        capacity: usize,
        max_chunk: usize,
        wave_budget: usize,
        logit_rows: usize,
    ) -> Result<Self> {
        let n = max_chunk;
        // The widest wave any chunk will use: chunks later in the prompt see more keys, so
        // size for the full capacity (fewer queries per wave, never more memory).
        let shape = AttentionShape {
            n,
            start_pos: capacity - n,
            n_head: cfg.n_head,
            n_kv: cfg.n_head_kv,
            head_dim: cfg.head_dim,
        };
        let wave_len = shape.wave_len(wave_budget);
        let moe = cfg.arch.is_moe();
        let pairs = if moe { n * cfg.n_expert_used } else { 0 };
        let ff_rows = if moe { pairs * cfg.ff_exp } else { n * cfg.ff };
        Ok(Scratch {
            kv: (0..cfg.n_layer)
                .map(|_| KvCache::new(dev, capacity, cfg.kv_dim()))
                .collect::<Result<_>>()?,
            x: dev.alloc(n * cfg.hidden, "residual stream")?,
            xn: dev.alloc(n * cfg.hidden, "normed activations")?,
            q: dev.alloc(n * cfg.q_dim(), "queries")?,
            k: dev.alloc(n * cfg.kv_dim(), "keys")?,
            v: dev.alloc(n * cfg.kv_dim(), "values")?,
            attn: dev.alloc(n * cfg.q_dim(), "attention output")?,
            scores: dev.alloc(shape.scratch_len(wave_len), "attention scores")?,
            wave_len,
            ffn_h: dev.alloc(ff_rows, "FFN hidden")?,
            expert_out: dev.alloc(pairs * cfg.hidden, "expert outputs")?,
            router_logits: dev.alloc(if moe { n * cfg.n_expert } else { 0 }, "router logits")?,
            shared_h: dev.alloc(n * cfg.ff_shexp, "shared-expert hidden")?,
            shared_out: dev.alloc(
                if cfg.ff_shexp > 0 { n * cfg.hidden } else { 0 },
                "shared-expert output",
            )?,
            shared_gate: dev.alloc(if cfg.ff_shexp > 0 { n } else { 0 }, "shared-expert gate")?,
            routing: if moe {
                Some(Routing::new(dev, n, cfg.n_expert, cfg.n_expert_used)?)
            } else {
                None
            },
            tokens: dev.alloc(n, "token ids")?,
            positions: dev.alloc(n, "positions")?,
            inv_freq: dev.upload(
                &rope_inv_freq(cfg.rope_base as f64, cfg.head_dim),
                "RoPE frequencies",
            )?,
            final_rows: dev.alloc(logit_rows * cfg.hidden, "final normed rows")?,
            logits: dev.alloc(logit_rows * cfg.vocab, "logits")?,
        })
    }

    /// The MoE routing buffers (allocated for MoE models only).
    pub fn routing(&self) -> Result<&Routing> {
        self.routing
            .as_ref()
            .ok_or_else(|| GpuError::Input("MoE buffers missing for a MoE layer".into()))
    }
}
