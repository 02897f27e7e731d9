//! The CPU reference forward pass: one token at a time through a KV cache, weights in f32,
//! activations and every accumulation in f64. Written for reading, not speed. One code path for
//! every arch: the arch's table row (`model::ARCHS`) and the file's tensors decide the rest
//! (RoPE pairing, QK-norm, biases, MoE, shared expert, tied LM head, RoPE frequency factors).

use crate::model::{Ffn, HostTensor, LayerWeights, ModelConfig, RopeType, SharedExpert, Weights};

use super::ops::{self, rms_norm, sigmoid};
use super::{Logits, ReferenceError};

/// Keys and values (after QK-norm and RoPE) of every position seen so far, per layer.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// [layer][pos * kv_dim + kv_head * head_dim + i]
    k: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    len: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        KvCache {
            k: vec![Vec::new(); cfg.n_layer],
            v: vec![Vec::new(); cfg.n_layer],
            len: 0,
        }
    }

    /// Positions already in the cache: the next token's position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Logits of the prompt `tokens` from position 0: the last position's, or every position's.
pub fn forward(
    cfg: &ModelConfig,
    weights: &Weights,
    tokens: &[u32],
    all_positions: bool,
) -> Result<Logits, ReferenceError> {
    let mut cache = KvCache::new(cfg);
    forward_with_cache(cfg, weights, &mut cache, tokens, all_positions)
}

/// Continues from `cache.len()` (the `start_pos`), appending `tokens` to the cache.
pub fn forward_with_cache(
    cfg: &ModelConfig,
    weights: &Weights,
    cache: &mut KvCache,
    tokens: &[u32],
    all_positions: bool,
) -> Result<Logits, ReferenceError> {
    if tokens.is_empty() {
        return Err(ReferenceError::EmptyPrompt);
    }
    let end = cache.len + tokens.len();
    if end > cfg.ctx {
        return Err(ReferenceError::ContextOverflow {
            start: cache.len,
            len: tokens.len(),
            ctx: cfg.ctx,
        });
    }
    if let Some((i, &t)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= cfg.vocab)
    {
        return Err(ReferenceError::TokenOutOfRange {
            index: i,
            token: t,
            vocab: cfg.vocab,
        });
    }

    let eps = f64::from(cfg.eps);
    let freqs = weights.rope_frequencies(cfg);
    let mut rows = Vec::new();
    let mut router_margins = Vec::with_capacity(tokens.len());
    for (i, &tok) in tokens.iter().enumerate() {
        let mut margin = f64::INFINITY;
        let pos = cache.len;
        let row = tok as usize * cfg.hidden;
        let mut x: Vec<f64> = weights.token_embd.data[row..row + cfg.hidden]
            .iter()
            .map(|&v| v.into())
            .collect();
        for (l, layer) in weights.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm.data, eps);
            let attn = attention(cfg, layer, cache, l, pos, &h, &freqs);
            add_assign(&mut x, &matvec(&layer.wo, 0, &attn));
            let h = rms_norm(&x, &layer.ffn_norm.data, eps);
            let (y, layer_margin) = ffn(cfg, &layer.ffn, &h);
            margin = margin.min(layer_margin);
            add_assign(&mut x, &y);
        }
        router_margins.push(margin);
        cache.len += 1;
        if all_positions || i + 1 == tokens.len() {
            let h = rms_norm(&x, &weights.output_norm.data, eps);
            rows.extend(
                matvec(weights.lm_head(), 0, &h)
                    .into_iter()
                    .map(|v| v as f32),
            );
        }
    }
    Ok(Logits {
        vocab: cfg.vocab,
        data: rows,
        router_margins,
    })
}

/// Self-attention of the token at `pos` over positions 0..=pos; its K/V join the cache.
/// `freqs`: RoPE's frequency per pair (`Weights::rope_frequencies`).
fn attention(
    cfg: &ModelConfig,
    layer: &LayerWeights,
    cache: &mut KvCache,
    l: usize,
    pos: usize,
    h: &[f64],
    freqs: &[f64],
) -> Vec<f64> {
    let hd = cfg.head_dim;
    let mut q = matvec(&layer.wq, 0, h);
    let mut k = matvec(&layer.wk, 0, h);
    let v = match &layer.bv {
        Some(b) => add(&matvec(&layer.wv, 0, h), &b.data),
        None => matvec(&layer.wv, 0, h),
    };
    if let Some(b) = &layer.bq {
        q = add(&q, &b.data);
    }
    if let Some(b) = &layer.bk {
        k = add(&k, &b.data);
    }
    // RoPE over the whole head, pairs as the arch says: angle pos · freq[i], all in f64.
    let angles: Vec<f64> = freqs.iter().map(|f| pos as f64 * f).collect();
    for (x, norm) in [(&mut q, &layer.q_norm), (&mut k, &layer.k_norm)] {
        for head in x.chunks_exact_mut(hd) {
            if let Some(w) = norm {
                let n = rms_norm(head, &w.data, f64::from(cfg.eps));
                head.copy_from_slice(&n);
            }
            match cfg.rope {
                RopeType::Neox => ops::rope_neox(head, &angles),
                RopeType::Norm => ops::rope_norm(head, &angles),
            }
        }
    }
    cache.k[l].extend_from_slice(&k);
    cache.v[l].extend_from_slice(&v);

    let kv_dim = cfg.kv_dim();
    let group = cfg.n_head / cfg.n_head_kv;
    let scale = 1.0 / (hd as f64).sqrt();
    let (keys, values) = (&cache.k[l], &cache.v[l]);
    let mut out = Vec::with_capacity(cfg.q_dim());
    for head in 0..cfg.n_head {
        let at = head / group * hd; // this head's KV head within a cache row
        let qh = &q[head * hd..(head + 1) * hd];
        let key = |t: usize| &keys[t * kv_dim + at..][..hd];
        let value = |t: usize| &values[t * kv_dim + at..][..hd];
        out.extend(ops::attend(qh, pos + 1, key, value, scale));
    }
    out
}

/// The FFN's output, and for a MoE layer its router margin (see `Logits::router_margins`).
fn ffn(cfg: &ModelConfig, ffn: &Ffn, h: &[f64]) -> (Vec<f64>, f64) {
    match ffn {
        Ffn::Dense { gate, up, down } => (gated_ffn(gate, up, down, 0, h), f64::INFINITY),
        Ffn::Moe {
            router,
            gate_exps,
            up_exps,
            down_exps,
            shared,
        } => {
            let logits = matvec(router, 0, h);
            let mut sorted = logits.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let k = cfg.n_expert_used;
            let margin = sorted
                .get(k)
                .map_or(f64::INFINITY, |next| sorted[k - 1] - next);
            let chosen = ops::route(&logits, k, cfg.norm_topk);
            let mut out = vec![0.0; cfg.hidden];
            for (e, w) in chosen {
                let y = gated_ffn(gate_exps, up_exps, down_exps, e, h);
                out.iter_mut().zip(&y).for_each(|(o, yi)| *o += w * yi);
            }
            if let Some(SharedExpert {
                gate_inp,
                gate,
                up,
                down,
            }) = shared
            {
                let g = sigmoid(dot_f32(&gate_inp.data, h));
                let y = gated_ffn(gate, up, down, 0, h);
                out.iter_mut().zip(&y).for_each(|(o, yi)| *o += g * yi);
            }
            (out, margin)
        }
    }
}

/// down · (silu(gate · h) ⊙ (up · h)), with matrix `e` of each (expert) stack.
fn gated_ffn(
    gate: &HostTensor,
    up: &HostTensor,
    down: &HostTensor,
    e: usize,
    h: &[f64],
) -> Vec<f64> {
    let g = matvec(gate, e, h);
    let u = matvec(up, e, h);
    let act: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| ops::swiglu(g, u)).collect();
    matvec(down, e, &act)
}

/// Matrix `e` of `w` (rows of `cols` elements) times `x`.
fn matvec(w: &HostTensor, e: usize, x: &[f64]) -> Vec<f64> {
    w.matrix(e)
        .chunks_exact(w.cols())
        .map(|row| dot_f32(row, x))
        .collect()
}

fn dot_f32(w: &[f32], x: &[f64]) -> f64 {
    w.iter().zip(x).map(|(&a, &b)| f64::from(a) * b).sum()
}

fn add(a: &[f64], b: &[f32]) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| x + f64::from(y)).collect()
}

fn add_assign(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
