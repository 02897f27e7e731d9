//! Launch wrapper of the QK-norm + RoPE + KV-append pass (kernel:
//! gpu-kernels/src/attention_input.rs: one entry per head dim, 64 and 128).

use super::check_len;
use super::flash_attention::{AttentionShape, KvCache};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::attention_input::{self, HEADS_PER_BLOCK};

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

/// What `attention_input` reads: the fused projection `qkv` (`[n][(n_head + 2·n_kv) ·
/// head_dim]` bf16, from `gemm_wgmma::matmul_bf16`, Q then K then V heads, row `t` at position `start_pos + t`), RoPE's
/// `inv_freq[head_dim / 2]`, and the QK-norm weights (`[head_dim]`) when the model has them.
#[derive(Clone, Copy)]
pub struct Projected<'a> {
    pub qkv: &'a Buffer<u16>,
    pub inv_freq: &'a Buffer<f32>,
    pub norm: Option<QkNorm<'a>>,
}

/// bf16 `q` (`[≥ n][n_head · head_dim]`) and the cache rows `start_pos..start_pos + n` from
/// `input`: QK-norm when given, then NEOX RoPE. The entry is picked by `shape.head_dim` (64 or
/// 128; others are a shape error).
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
    let hd = shape.head_dim;
    let k_name: &'static str = match hd {
        64 => "attention_input_hd64",
        _ => "attention_input_hd128",
    };
    let (n, start_pos) = shape.validate(k_name, cache)?;
    let heads = shape.n_head + 2 * shape.n_kv;
    check_len(k_name, "qkv", qkv, shape.n * heads * hd)?;
    check_len(k_name, "inv_freq", inv_freq, hd / 2)?;
    q.check(k_name, "q", shape.n, shape.n_head * hd)?;
    if let Some(nw) = norm {
        check_len(k_name, "q_norm", nw.q, hd)?;
        check_len(k_name, "k_norm", nw.k, hd)?;
        ensure_shape!(
            nw.eps.is_finite() && nw.eps >= 0.0,
            k_name,
            "eps {} is not valid",
            nw.eps
        );
    }
    if n == 0 {
        return Ok(());
    }
    let mut cfg = LaunchConfig::linear(n, 32 * HEADS_PER_BLOCK as u32);
    cfg.grid.1 = heads.div_ceil(HEADS_PER_BLOCK) as u32;
    let (qn, kn, eps, has) = match norm {
        Some(nw) => (nw.q, nw.k, nw.eps, 1),
        None => (inv_freq, inv_freq, 0.0, 0), // unread without a norm
    };
    let (x, f, qn, kn) = (qkv.input(), inv_freq.input(), qn.input(), kn.input());
    let (q, k, v) = (
        q.data().output(),
        cache.k.data().output(),
        cache.v_t.data().output(),
    );
    let (heads, kv, cap) = (
        shape.n_head as u32,
        shape.n_kv as u32,
        cache.capacity() as u32,
    );
    match hd {
        64 => attention_input::attention_input_hd64::launch(
            dev, cfg, x, f, qn, kn, q, k, v, start_pos, heads, kv, cap, has, eps,
        ),
        _ => attention_input::attention_input_hd128::launch(
            dev, cfg, x, f, qn, kn, q, k, v, start_pos, heads, kv, cap, has, eps,
        ),
    }
}
