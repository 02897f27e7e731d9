//! One prompt's prefill: chunks of tokens through embedding → layers → final norm → LM head.
//! The sequential path is the same code with chunks of one token.

use super::scratch::{Lease, Scratch};
use super::weights::{GpuFfn, GpuLayer, GpuModel};
use crate::gpu::ops::attention_input::{
    Projected, Projection, QkNorm, attention_input, fuses, project_attention_input,
};
use crate::gpu::ops::embedding;
use crate::gpu::ops::flash_attention::{AttentionShape, flash_attention};
use crate::gpu::ops::gemm::{self, Epilogue, GemmShape};
use crate::gpu::ops::gemm_wgmma::{matmul, matmul_bf16, matmul_swiglu};
use crate::gpu::ops::moe::MoeShape;
use crate::gpu::ops::moe::RouteOptions;
use crate::gpu::ops::norm::{self, NormShape};
use crate::gpu::{Device, GpuError, Result};
use std::time::Instant;

/// How to run a prompt.
#[derive(Clone, Debug, Default)]
pub struct PrefillOptions {
    /// Tokens per chunk (`None`: the whole prompt in one chunk).
    pub chunk: Option<usize>,
    /// Logits for every position instead of the last one only.
    pub all_logits: bool,
    /// Synchronise after each stage and time it (slower; for `kiln bench` breakdowns).
    pub profile: bool,
    /// After each MoE layer's routing, read its expert offsets back and count the experts
    /// that got rows (a synchronisation per layer; `kiln bench`'s profiled pass): how many
    /// experts' weights the layer's grouped GEMMs read.
    pub expert_census: bool,
}

/// Seconds spent per pipeline stage (only with `PrefillOptions::profile`).
pub type StageTimes = Vec<(&'static str, f64)>;

pub struct PrefillOutput {
    /// `rows × vocab` logits: the last position, or every position with `all_logits`.
    pub logits: Vec<f32>,
    pub rows: usize,
    /// The chunk sizes that ran, in order: proof of which path executed.
    pub chunks: Vec<usize>,
    /// Kernel launches made for this prompt.
    pub launches: u64,
    pub stage_seconds: StageTimes,
    /// With `PrefillOptions::expert_census`: per MoE layer of each chunk, in order, the
    /// experts that got at least one row.
    pub experts_reached: Vec<usize>,
}

/// A prompt in progress on one device.
pub struct Session<'m> {
    model: &'m GpuModel,
    dev: Device,
    s: Lease<'m>,
    pos: usize,
    capacity: usize,
    max_chunk: usize,
    opts: PrefillOptions,
    logits: Vec<f32>,
    chunks: Vec<usize>,
    stages: StageTimes,
    experts_reached: Vec<usize>,
}

/// Prefills `tokens` and returns the logits (see `PrefillOptions`).
pub fn prefill(
    model: &GpuModel,
    dev: &Device,
    tokens: &[u32],
    opts: &PrefillOptions,
) -> Result<PrefillOutput> {
    let chunk = opts
        .chunk
        .unwrap_or(tokens.len())
        .clamp(1, tokens.len().max(1));
    let mut session = Session::new(model, dev, tokens.len(), chunk, opts.clone())?;
    for c in tokens.chunks(chunk) {
        session.forward_chunk(c)?;
    }
    session.finish()
}

impl<'m> Session<'m> {
    /// Buffers for a prompt of `capacity` tokens fed in chunks of at most `max_chunk`.
    pub fn new(
        model: &'m GpuModel,
        dev: &Device,
        capacity: usize,
        max_chunk: usize,
        opts: PrefillOptions,
    ) -> Result<Self> {
        let cfg = &model.cfg;
        if capacity == 0 {
            return Err(GpuError::Input("the prompt is empty".into()));
        }
        if capacity > cfg.ctx {
            return Err(GpuError::Input(format!(
                "the prompt has {capacity} tokens, past the model's context of {}",
                cfg.ctx
            )));
        }
        let max_chunk = max_chunk.clamp(1, capacity);
        let logit_rows = if opts.all_logits { max_chunk } else { 1 };
        let dev = dev.fresh_counter();
        let s = model.scratch.lease(
            &dev,
            cfg,
            &model.inv_freq,
            (capacity, max_chunk, logit_rows),
        )?;
        Ok(Session {
            model,
            dev,
            s,
            pos: 0,
            capacity,
            max_chunk,
            opts,
            logits: Vec::new(),
            chunks: Vec::new(),
            stages: Vec::new(),
            experts_reached: Vec::new(),
        })
    }

    /// Runs `f` as pipeline stage `name`, timing it when profiling.
    fn stage(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&Device, &Scratch) -> Result<()>,
    ) -> Result<()> {
        if !self.opts.profile {
            return f(&self.dev, &self.s);
        }
        self.dev.synchronize()?;
        let t = Instant::now();
        f(&self.dev, &self.s)?;
        self.dev.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        match self.stages.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += secs,
            None => self.stages.push((name, secs)),
        }
        Ok(())
    }

    /// Feeds the next chunk of the prompt.
    pub fn forward_chunk(&mut self, tokens: &[u32]) -> Result<()> {
        let (n, start) = (tokens.len(), self.pos);
        if n == 0 || n > self.max_chunk || start + n > self.capacity {
            return Err(GpuError::Input(format!(
                "chunk of {n} tokens at position {start} does not fit this session ({} tokens, chunks ≤ {})",
                self.capacity, self.max_chunk
            )));
        }
        let model = self.model;
        let s: &mut Scratch = &mut self.s;
        embedding::embed_tokens(&self.dev, &model.token_embd, tokens, &mut s.tokens, &s.x)?;
        for (li, layer) in model.layers.iter().enumerate() {
            self.attention_block(li, layer, n, start)?;
            self.ffn_block(layer, n)?;
        }
        self.pos += n;
        self.chunks.push(n);
        if self.opts.all_logits {
            let rows = self.lm_head(0, n)?;
            self.logits.extend(rows);
        }
        Ok(())
    }

    fn attention_block(&mut self, li: usize, l: &GpuLayer, n: usize, start: usize) -> Result<()> {
        let cfg = &self.model.cfg;
        let rows = NormShape {
            rows: n,
            width: cfg.hidden,
            eps: cfg.eps,
        };
        let shape = AttentionShape {
            n,
            start_pos: start,
            n_head: cfg.n_head,
            n_kv: cfg.n_head_kv,
            head_dim: cfg.head_dim,
        };
        let qk_norm = match (&l.q_norm, &l.k_norm) {
            (Some(q), Some(k)) => Some(QkNorm { q, k, eps: cfg.eps }),
            _ => None,
        };
        if fuses(cfg.head_dim) {
            // head_dim 128: QK-norm, RoPE and the cache stores run in the projection's
            // epilogue (the projection never goes through memory).
            self.stage("qkv projection, qk-norm, rope, kv append", |dev, s| {
                norm::rms_norm_rows(dev, &s.x, &l.attn_norm, &s.xn16, None, rows)?;
                let input = Projection {
                    x: &s.xn16,
                    w: &l.wqkv,
                    bias: l.bqkv.as_ref(),
                    inv_freq: &s.inv_freq,
                    norm: qk_norm,
                };
                project_attention_input(dev, input, &s.q16, &s.kv[li], shape)
            })?;
        } else {
            self.stage("qkv projection", |dev, s| {
                norm::rms_norm_rows(dev, &s.x, &l.attn_norm, &s.xn16, None, rows)?;
                matmul_bf16(
                    dev,
                    &s.xn16,
                    &l.wqkv,
                    &s.qkv,
                    n,
                    Epilogue::bias(l.bqkv.as_ref()),
                )
            })?;
            self.stage("qk-norm, rope, kv append", |dev, s| {
                let input = Projected {
                    qkv: &s.qkv,
                    inv_freq: &s.inv_freq,
                    norm: qk_norm,
                };
                attention_input(dev, input, &s.q16, &s.kv[li], shape)
            })?;
        }
        self.stage("attention", |dev, s| {
            flash_attention(dev, &s.q16, &s.kv[li], &s.attn16, shape)
        })?;
        // The residual add is the FFN norm's (`rms_norm_rows_adding`): in this GEMM's epilogue
        // it cost 34 µs of 143 at N = 4096 (H200), where the norm reads the stream anyway.
        self.stage("output projection", |dev, s| {
            matmul(dev, &s.attn16, &l.wo, &s.attn_out, n, Epilogue::STORE)
        })
    }

    fn ffn_block(&mut self, l: &GpuLayer, n: usize) -> Result<()> {
        let cfg = &self.model.cfg;
        let h = cfg.hidden;
        let rows = NormShape {
            rows: n,
            width: h,
            eps: cfg.eps,
        };
        // f32 rows only for the shared-expert gate (the router reads the bf16 rows).
        let f32_rows = matches!(&l.ffn, GpuFfn::Moe(m) if m.shared.is_some());
        self.stage("residual add, ffn norm", |dev, s| {
            let xn = f32_rows.then_some(&s.xn);
            let (x, add) = (&s.x, &s.attn_out);
            norm::rms_norm_rows_adding(dev, x, add, &l.ffn_norm, &s.xn16, xn, rows)
        })?;
        match &l.ffn {
            GpuFfn::Dense(d) => self.stage("dense ffn", |dev, s| {
                matmul_swiglu(dev, &s.xn16, &d.gate_up, &s.ffn_h16, n)?;
                matmul(dev, &s.ffn_h16, &d.down, &s.x, n, Epilogue::ADD_TO_Y)
            }),
            GpuFfn::Moe(moe) => {
                let (router, experts, shared) = (&moe.router, &moe.experts, &moe.shared);
                let shape = MoeShape {
                    tokens: n,
                    hidden: h,
                    ff: cfg.ff_exp,
                };
                let f32_proj = |m| GemmShape { rows: n, m, k: h };
                self.stage("moe routing", |dev, s| {
                    let opts = RouteOptions {
                        renormalise: cfg.norm_topk,
                        ..RouteOptions::default()
                    };
                    s.router()?
                        .route(dev, &s.xn16, router, s.routing()?, n, opts)
                })?;
                if self.opts.expert_census {
                    let offsets = self.s.routing()?.offsets.to_vec()?;
                    let reached = offsets.windows(2).filter(|w| w[1] > w[0]).count();
                    self.experts_reached.push(reached);
                }
                self.stage("moe experts", |dev, s| {
                    let r = s.routing()?;
                    let xg = Scratch::needed(&s.xg16, "expert-ordered rows")?;
                    r.gather(dev, &s.xn16, xg, shape)?;
                    r.experts_swiglu(dev, xg, &experts.gate_up, &s.ffn_h16, shape)?;
                    r.experts_down(dev, &s.ffn_h16, &experts.down, &s.expert_out, shape)
                })?;
                if let Some(se) = shared {
                    self.stage("shared expert", |dev, s| {
                        let mid = Scratch::needed(&s.shared_h16, "shared-expert hidden")?;
                        matmul_swiglu(dev, &s.xn16, &se.ffn.gate_up, mid, n)?;
                        matmul(dev, mid, &se.ffn.down, &s.shared_out, n, Epilogue::STORE)?;
                        gemm::matmul_f32(
                            dev,
                            &s.xn,
                            &se.gate_inp,
                            &s.shared_gate,
                            &s.f32_partials,
                            f32_proj(1),
                        )
                    })?;
                }
                self.stage("moe combine", |dev, s| {
                    let r = s.routing()?;
                    let sh = shared.as_ref().map(|_| (&s.shared_out, &s.shared_gate));
                    r.combine(dev, &s.expert_out, sh, &s.x, shape)
                })
            }
        }
    }

    /// Final norm and LM head over chunk rows `first..first + rows`; returns their logits.
    fn lm_head(&mut self, first: usize, rows: usize) -> Result<Vec<f32>> {
        let cfg = &self.model.cfg;
        let (h, v) = (cfg.hidden, cfg.vocab);
        let model = self.model;
        let s: &mut Scratch = &mut self.s;
        s.final_rows.copy_from(&s.x, first * h, 0, rows * h)?;
        let dev = &self.dev;
        let shape = NormShape {
            rows,
            width: h,
            eps: cfg.eps,
        };
        norm::rms_norm_rows(
            dev,
            &s.final_rows,
            &model.output_norm,
            &s.final16,
            None,
            shape,
        )?;
        matmul(
            dev,
            &s.final16,
            &model.output,
            &s.logits,
            rows,
            Epilogue::STORE,
        )?;
        let mut out = s.logits.to_vec()?;
        out.truncate(rows * v);
        Ok(out)
    }

    /// Positions fed so far: the next token's position.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The most positions this session can hold (its KV cache's length).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Kernel launches made so far by this session.
    pub fn launches(&self) -> u64 {
        self.dev.launch_count()
    }

    /// The logits of the last position fed (`vocab` values), from the residual rows the last
    /// chunk left: the final norm and LM head over that one row (with `all_logits`, the row
    /// already computed). Nothing else is re-run; the LM head is batch invariant, so these are
    /// the bits a prefill of the whole sequence gives at this position.
    pub fn logits_of_last(&mut self) -> Result<Vec<f32>> {
        let Some(&last) = self.chunks.last() else {
            return Err(GpuError::Input("no tokens were fed".into()));
        };
        let v = self.model.cfg.vocab;
        if self.opts.all_logits {
            return Ok(self.logits[self.logits.len() - v..].to_vec());
        }
        self.lm_head(last - 1, 1)
    }

    /// One decode step: feeds `token` at the next position (a chunk of one, through the same
    /// kernels as any chunk) and returns that position's logits.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.forward_chunk(&[token])?;
        self.logits_of_last()
    }

    /// Logits of the last position (unless every position was kept) and the run's record.
    pub fn finish(mut self) -> Result<PrefillOutput> {
        if !self.opts.all_logits {
            let last = self.chunks.last().copied().unwrap_or(0);
            if last == 0 {
                return Err(GpuError::Input("no tokens were fed".into()));
            }
            self.logits = self.lm_head(last - 1, 1)?;
        }
        self.dev.synchronize()?;
        let rows = self.logits.len() / self.model.cfg.vocab;
        Ok(PrefillOutput {
            logits: self.logits,
            rows,
            chunks: self.chunks,
            launches: self.dev.launch_count(),
            stage_seconds: self.stages,
            experts_reached: self.experts_reached,
        })
    }
}
