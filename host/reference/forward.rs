//! The CPU reference forward pass: one token at a time through a KV cache, weights in f32,
//! activations and every accumulation in f64. Written for reading, not speed.

use crate::model::{Ffn, HostTensor, LayerWeights, ModelConfig, SharedExpert, Weights};

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

    let mut rows = Vec::new();
    for (i, &tok) in tokens.iter().enumerate() {
        let pos = cache.len;
        let row = tok as usize * cfg.hidden;
        let mut x: Vec<f64> = weights.token_embd.data[row..row + cfg.hidden]
            .iter()
            .map(|&v| v.into())
            .collect();
        for (l, layer) in weights.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm.data, cfg.eps);
            let attn = attention(cfg, layer, cache, l, pos, &h);
            add_assign(&mut x, &matvec(&layer.wo, 0, &attn));
            let h = rms_norm(&x, &layer.ffn_norm.data, cfg.eps);
            add_assign(&mut x, &ffn(cfg, &layer.ffn, &h));
        }
        cache.len += 1;
        if all_positions || i + 1 == tokens.len() {
            let h = rms_norm(&x, &weights.output_norm.data, cfg.eps);
            rows.extend(matvec(&weights.output, 0, &h).into_iter().map(|v| v as f32));
        }
    }
    Ok(Logits {
        vocab: cfg.vocab,
        data: rows,
    })
}

/// Self-attention of the token at `pos` over positions 0..=pos; its K/V join the cache.
fn attention(
    cfg: &ModelConfig,
    layer: &LayerWeights,
    cache: &mut KvCache,
    l: usize,
    pos: usize,
    h: &[f64],
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
    for (x, norm) in [(&mut q, &layer.q_norm), (&mut k, &layer.k_norm)] {
        for head in x.chunks_exact_mut(hd) {
            if let Some(w) = norm {
                let n = rms_norm(head, &w.data, cfg.eps);
                head.copy_from_slice(&n);
            }
            rope_neox(head, pos, cfg.rope_base);
        }
    }
    cache.k[l].extend_from_slice(&k);
    cache.v[l].extend_from_slice(&v);

    let kv_dim = cfg.kv_dim();
    let group = cfg.n_head / cfg.n_head_kv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; cfg.q_dim()];
    for head in 0..cfg.n_head {
        let kvh = head / group;
        let qh = &q[head * hd..(head + 1) * hd];
        let key = |t: usize| &cache.k[l][t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd];
        let scores: Vec<f64> = (0..=pos).map(|t| dot(qh, key(t)) * scale).collect();
        let p = softmax(&scores);
        let o = &mut out[head * hd..(head + 1) * hd];
        for (t, &pt) in p.iter().enumerate() {
            let val = &cache.v[l][t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd];
            for (oi, &vi) in o.iter_mut().zip(val) {
                *oi += pt * vi;
            }
        }
    }
    out
}

fn ffn(cfg: &ModelConfig, ffn: &Ffn, h: &[f64]) -> Vec<f64> {
    match ffn {
        Ffn::Dense { gate, up, down } => swiglu(gate, up, down, 0, h),
        Ffn::Moe {
            router,
            gate_exps,
            up_exps,
            down_exps,
            shared,
        } => {
            let probs = softmax(&matvec(router, 0, h));
            let chosen = top_k(&probs, cfg.n_expert_used);
            let mut weights: Vec<f64> = chosen.iter().map(|&e| probs[e]).collect();
            if cfg.norm_topk {
                let sum: f64 = weights.iter().sum();
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            let mut out = vec![0.0; cfg.hidden];
            for (&e, &w) in chosen.iter().zip(&weights) {
                let y = swiglu(gate_exps, up_exps, down_exps, e, h);
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
                let y = swiglu(gate, up, down, 0, h);
                out.iter_mut().zip(&y).for_each(|(o, yi)| *o += g * yi);
            }
            out
        }
    }
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    // Stable sort on descending value keeps equal values in index order.
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

/// down · (silu(gate · h) ⊙ (up · h)), with matrix `e` of each (expert) stack.
fn swiglu(gate: &HostTensor, up: &HostTensor, down: &HostTensor, e: usize, h: &[f64]) -> Vec<f64> {
    let g = matvec(gate, e, h);
    let u = matvec(up, e, h);
    let act: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| silu(g) * u).collect();
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

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(a: &[f64], b: &[f32]) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| x + f64::from(y)).collect()
}

fn add_assign(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// x / sqrt(mean(x²) + eps) ⊙ w.
fn rms_norm(x: &[f64], w: &[f32], eps: f32) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + f64::from(eps)).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &w)| v * r * f64::from(w))
        .collect()
}

/// NEOX ("rotate half") RoPE: element i pairs with i + d/2, rotated by pos · base^(-2i/d).
fn rope_neox(x: &mut [f64], pos: usize, base: f32) {
    let half = x.len() / 2;
    for i in 0..half {
        let theta = pos as f64 * f64::from(base).powf(-2.0 * i as f64 / x.len() as f64);
        let (s, c) = theta.sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = a * s + b * c;
    }
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
