//! One prompt's prefill: chunks of tokens through embedding → layers → final norm → LM head.
//! The sequential path is the same code with chunks of one token.

use super::scratch::Scratch;
use super::weights::{GpuFfn, GpuLayer, GpuModel};
use crate::gpu::ops::attention::{self, AttentionShape};
use crate::gpu::ops::embedding;
use crate::gpu::ops::gemm::{self, Epilogue, GemmShape};
use crate::gpu::ops::moe::MoeShape;
use crate::gpu::ops::norm::{self, NormShape};
use crate::gpu::ops::rope::{self, RopeShape};
use crate::gpu::{Device, GpuError, Result};
use std::time::Instant;

/// How to run a prompt.
#[derive(Clone, Debug)]
pub struct PrefillOptions {
    /// Tokens per chunk (`None`: the whole prompt in one chunk).
    pub chunk: Option<usize>,
    /// Bytes of attention-score scratch a wave of queries may use.
    pub wave_budget_bytes: usize,
    /// Logits for every position instead of the last one only.
    pub all_logits: bool,
    /// Synchronise after each stage and time it (slower; for `kiln bench` breakdowns).
    pub profile: bool,
}

impl Default for PrefillOptions {
    fn default() -> Self {
        PrefillOptions {
            chunk: None,
            wave_budget_bytes: 256 << 20,
            all_logits: false,
            profile: false,
        }
    }
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
    /// Queries per attention wave.
    pub wave_len: usize,
    pub stage_seconds: StageTimes,
}

/// A prompt in progress on one device.
pub struct Session<'m> {
    model: &'m GpuModel,
    dev: Device,
    s: Scratch,
    pos: usize,
    capacity: usize,
    max_chunk: usize,
    opts: PrefillOptions,
    logits: Vec<f32>,
    chunks: Vec<usize>,
    stages: StageTimes,
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
        let s = Scratch::new(
            &dev,
            cfg,
            capacity,
            max_chunk,
            opts.wave_budget_bytes,
            logit_rows,
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
        let positions: Vec<u32> = (start..start + n).map(|p| p as u32).collect();
        self.s.positions.write(&positions)?;
        embedding::embed_tokens(
            &self.dev,
            &model.token_embd,
            tokens,
            &mut self.s.tokens,
            &self.s.x,
        )?;
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
        let (h, hd, qd, kvd, eps) = (cfg.hidden, cfg.head_dim, cfg.q_dim(), cfg.kv_dim(), cfg.eps);
        let (nh, nkv) = (cfg.n_head, cfg.n_head_kv);
        // The chunk's shapes: `rows` vectors of `width` to normalise; projections of its n rows
        // to m outputs from k inputs; its heads to rotate.
        let vectors = |rows, width| NormShape { rows, width, eps };
        let proj = |m, k| GemmShape { rows: n, m, k };
        let bias = Epilogue::bias;
        let heads = |n_heads| RopeShape {
            tokens: n,
            n_heads,
            head_dim: hd,
            rot_dims: hd,
        };
        let shape = AttentionShape {
            n,
            start_pos: start,
            n_head: nh,
            n_kv: nkv,
            head_dim: hd,
        };
        self.stage("qkv projection", |dev, s| {
            norm::rms_norm_rows(dev, &s.x, &l.attn_norm, &s.xn, vectors(n, h))?;
            gemm::matmul_bf16(dev, &s.xn, &l.wq, &s.q, proj(qd, h), bias(l.bq.as_ref()))?;
            gemm::matmul_bf16(dev, &s.xn, &l.wk, &s.k, proj(kvd, h), bias(l.bk.as_ref()))?;
            gemm::matmul_bf16(dev, &s.xn, &l.wv, &s.v, proj(kvd, h), bias(l.bv.as_ref()))
        })?;
        self.stage("qk-norm, rope, kv append", |dev, s| {
            if let Some(w) = &l.q_norm {
                norm::rms_norm_heads(dev, &s.q, w, &s.q, vectors(n * nh, hd))?;
            }
            if let Some(w) = &l.k_norm {
                norm::rms_norm_heads(dev, &s.k, w, &s.k, vectors(n * nkv, hd))?;
            }
            rope::rope_neox(dev, &s.q, &s.positions, &s.inv_freq, heads(nh))?;
            rope::rope_neox(dev, &s.k, &s.positions, &s.inv_freq, heads(nkv))?;
            attention::kv_append(dev, &s.k, &s.v, &s.kv[li], shape)
        })?;
        self.stage("attention", |dev, s| {
            attention::attention(dev, &s.q, &s.kv[li], &s.attn, &s.scores, shape, s.wave_len)
        })?;
        self.stage("output projection", |dev, s| {
            gemm::matmul_bf16(dev, &s.attn, &l.wo, &s.x, proj(h, qd), Epilogue::ADD_TO_Y)
        })
    }

    fn ffn_block(&mut self, l: &GpuLayer, n: usize) -> Result<()> {
        let cfg = &self.model.cfg;
        let (h, eps) = (cfg.hidden, cfg.eps);
        let vectors = |rows, width| NormShape { rows, width, eps };
        let proj = |m, k| GemmShape { rows: n, m, k };
        self.stage("ffn norm", |dev, s| {
            norm::rms_norm_rows(dev, &s.x, &l.ffn_norm, &s.xn, vectors(n, h))
        })?;
        match &l.ffn {
            GpuFfn::Dense(d) => self.stage("dense ffn", |dev, s| {
                let (ff, add) = (cfg.ff, Epilogue::ADD_TO_Y);
                gemm::matmul_gated_bf16(dev, &s.xn, &d.gate, &d.up, &s.ffn_h, proj(ff, h))?;
                gemm::matmul_bf16(dev, &s.ffn_h, &d.down, &s.x, proj(h, ff), add)
            }),
            GpuFfn::Moe(moe) => {
                let (router, experts, shared) = (&moe.router, &moe.experts, &moe.shared);
                let shape = MoeShape {
                    tokens: n,
                    hidden: h,
                    ff: cfg.ff_exp,
                };
                self.stage("moe routing", |dev, s| {
                    let r = s.routing()?;
                    let logits = &s.router_logits;
                    gemm::matmul_f32(dev, &s.xn, router, logits, proj(cfg.n_expert, h))?;
                    r.route(dev, logits, n, cfg.norm_topk)
                })?;
                self.stage("moe experts", |dev, s| {
                    let r = s.routing()?;
                    r.experts_gated(dev, &s.xn, &experts.gate, &experts.up, &s.ffn_h, shape)?;
                    r.experts_down(dev, &s.ffn_h, &experts.down, &s.expert_out, shape)
                })?;
                if let Some(se) = shared {
                    let (ffn, fs) = (&se.ffn, cfg.ff_shexp);
                    self.stage("shared expert", |dev, s| {
                        let (x, mid, out) = (&s.xn, &s.shared_h, &s.shared_out);
                        gemm::matmul_gated_bf16(dev, x, &ffn.gate, &ffn.up, mid, proj(fs, h))?;
                        gemm::matmul_bf16(dev, mid, &ffn.down, out, proj(h, fs), Epilogue::STORE)?;
                        gemm::matmul_f32(dev, x, &se.gate_inp, &s.shared_gate, proj(1, h))
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
        let s = &mut self.s;
        s.final_rows.copy_from(&s.x, first * h, 0, rows * h)?;
        let dev = &self.dev;
        let (x, norm) = (&s.final_rows, &model.output_norm);
        let shape = NormShape {
            rows,
            width: h,
            eps: cfg.eps,
        };
        norm::rms_norm_rows(dev, x, norm, x, shape)?;
        let head = GemmShape { rows, m: v, k: h };
        gemm::matmul_bf16(dev, x, &model.output, &s.logits, head, Epilogue::STORE)?;
        let mut out = s.logits.to_vec()?;
        out.truncate(rows * v);
        Ok(out)
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
            wave_len: self.s.wave_len,
            stage_seconds: self.stages,
        })
    }
}
