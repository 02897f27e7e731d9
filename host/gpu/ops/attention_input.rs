//! Launch wrapper of the QK-norm + RoPE + KV-append pass (kernel:
//! gpu-kernels/src/attention_input.rs).

use super::check_len;
use super::flash_attention::{AttentionShape, KvCache};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::attention_input::{self, HEAD_DIM};

/// RoPE's `inv_freq[i] = base^(-2i/rot_dims)` for `i < rot_dims/2`, computed in f64 and rounded
/// once (the kernel then does one f32 multiply per angle, as the reference frameworks do).
pub fn rope_inv_freq(base: f64, rot_dims: usize) -> Vec<f32> {
    (0..rot_dims / 2)
        .map(|i| base.powf(-2.0 * i as f64 / rot_dims as f64) as f32)
        .collect()
}

/// Qwen3's per-head RMSNorm weights for Q and K, and its epsilon.
#[derive(Clone, Copy)]
pub struct QkNorm<'a> {
    pub q: &'a Buffer<f32>,
    pub k: &'a Buffer<f32>,
    pub eps: f32,
}

/// What `attention_input` reads: the fused projection `qkv` (`[n][(n_head + 2·n_kv) · 128]`
/// f32, Q then K then V heads, row `t` at position `start_pos + t`), RoPE's `inv_freq[64]`, and
/// the QK-norm weights when the model has them.
#[derive(Clone, Copy)]
pub struct Projected<'a> {
    pub qkv: &'a Buffer<f32>,
    pub inv_freq: &'a Buffer<f32>,
    pub norm: Option<QkNorm<'a>>,
}

/// bf16 `q` (`[≥ n][n_head · 128]`) and the cache rows `start_pos..start_pos + n` from
/// `input`: QK-norm when given, then NEOX RoPE.
pub fn attention_input(
    dev: &Device,
    input: Projected<'_>,
    q: &TmaMatrix,
    cache: &KvCache,
    shape: AttentionShape,
) -> Result<()> {
    let Projected {
        qkv,
        inv_freq,
        norm,
    } = input;
    const K: &str = "attention_input_hd128";
    let (n, start_pos) = shape.validate(K, cache)?;
    let heads = shape.n_head + 2 * shape.n_kv;
    check_len(K, "qkv", qkv, shape.n * heads * HEAD_DIM)?;
    check_len(K, "inv_freq", inv_freq, HEAD_DIM / 2)?;
    q.check(K, "q", shape.n, shape.n_head * HEAD_DIM)?;
    if let Some(nw) = norm {
        check_len(K, "q_norm", nw.q, HEAD_DIM)?;
        check_len(K, "k_norm", nw.k, HEAD_DIM)?;
        ensure_shape!(
            nw.eps.is_finite() && nw.eps >= 0.0,
            K,
            "eps {} is not valid",
            nw.eps
        );
    }
    if n == 0 {
        return Ok(());
    }
    let mut cfg = LaunchConfig::linear(n, 32);
    cfg.grid.1 = heads as u32;
    let (qn, kn, eps, has) = match norm {
        Some(nw) => (nw.q, nw.k, nw.eps, 1),
        None => (inv_freq, inv_freq, 0.0, 0), // unread without a norm
    };
    attention_input::attention_input_hd128::launch(
        dev,
        cfg,
        qkv.input(),
        inv_freq.input(),
        qn.input(),
        kn.input(),
        q.data().output(),
        cache.k.data().output(),
        cache.v_t.data().output(),
        start_pos,
        shape.n_head as u32,
        shape.n_kv as u32,
        cache.capacity() as u32,
        has,
        eps,
    )
}
