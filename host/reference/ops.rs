//! Float64 reference operations: the one set that the CPU reference forward and every kernel
//! test (`tests/kernels_*.rs`) compare against. Written for reading; every sum runs in f64 in
//! the obvious order.

/// `v` widened to f64.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| f64::from(*x)).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y[rows][m] = x[rows][k] · w[m][k]ᵀ`.
pub fn matmul(x: &[f64], w: &[f64], rows: usize, m: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * m];
    for r in 0..rows {
        for c in 0..m {
            y[r * m + c] = dot(&x[r * k..][..k], &w[c * k..][..k]);
        }
    }
    y
}

/// `x / sqrt(mean(x²) + eps) ⊙ w` of one vector.
pub fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &w)| v * r * f64::from(w))
        .collect()
}

/// RoPE frequencies `base^(-2i/rot_dims)` for `i < rot_dims/2`.
pub fn rope_inv_freq(base: f64, rot_dims: usize) -> Vec<f64> {
    (0..rot_dims / 2)
        .map(|i| base.powf(-2.0 * i as f64 / rot_dims as f64))
        .collect()
}

/// NEOX ("rotate half") RoPE of one head vector in place: element `i` pairs with `i + half`
/// (`half = angles.len()`) and rotates by `angles[i]`; elements from `2·half` on pass through.
pub fn rope_neox(x: &mut [f64], angles: &[f64]) {
    let half = angles.len();
    for (i, &theta) in angles.iter().enumerate() {
        let (s, c) = theta.sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = a * s + b * c;
    }
}

/// NORM (GPT-J, adjacent-pair) RoPE of one head vector in place, llama.cpp's
/// `LLAMA_ROPE_TYPE_NORM`: elements `2i` and `2i + 1` rotate by `angles[i]`; elements from
/// `2·angles.len()` on pass through.
pub fn rope_norm(x: &mut [f64], angles: &[f64]) {
    for (i, &theta) in angles.iter().enumerate() {
        let (s, c) = theta.sin_cos();
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

pub fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// SwiGLU of one element: `silu(gate) · up`.
pub fn swiglu(gate: f64, up: f64) -> f64 {
    silu(gate) * up
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    // Stable sort on descending value keeps equal values in index order.
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

/// MoE routing of one token: softmax over the router logits, the `k` most probable experts
/// (ties → lower id), their probabilities renormalised to sum 1 when `renormalise`.
pub fn route(logits: &[f64], k: usize, renormalise: bool) -> Vec<(usize, f64)> {
    let probs = softmax(logits);
    let chosen = top_k(&probs, k);
    let total: f64 = chosen.iter().map(|&e| probs[e]).sum();
    chosen
        .into_iter()
        .map(|e| {
            (
                e,
                if renormalise {
                    probs[e] / total
                } else {
                    probs[e]
                },
            )
        })
        .collect()
}

/// Attention of one query head over keys/values `0..len`: `Σ_t softmax(q·k_t · scale)_t v_t`.
pub fn attend<'a>(
    q: &[f64],
    len: usize,
    key: impl Fn(usize) -> &'a [f64],
    value: impl Fn(usize) -> &'a [f64],
    scale: f64,
) -> Vec<f64> {
    let scores: Vec<f64> = (0..len).map(|t| dot(q, key(t)) * scale).collect();
    let p = softmax(&scores);
    let mut out = vec![0.0; q.len()];
    for (t, &pt) in p.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(value(t)) {
            *o += pt * v;
        }
    }
    out
}
