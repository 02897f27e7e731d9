//! Launch wrappers of the QK-norm + RoPE + KV-append pass: after the Q|K|V projection
//! ([`attention_input`]; kernel gpu-kernels/src/attention_input.rs, one entry per head dim, 64
//! and 128), or fused into the projection's epilogue ([`project_attention_input`]; kernel
//! `gemm_wgmma_qkv_rope`, head_dim 128).

use super::check_len;
use super::flash_attention::{AttentionShape, KvCache};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::attention_input::{self, HEADS_PER_BLOCK};
use gpu_kernels::gemm_wgmma::{
    self, BM, EPI_BIAS, EPI_QK_NORM, QKV_HEAD_DIM, THREADS, WIDE_BN, WIDE_SHARED_BYTES,
};

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
    q.check(k_name, "q", shape.n, shape.n_head * hd)?;
    check_rope(k_name, inv_freq, norm, hd)?;
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

/// The checks both paths share: RoPE's `inv_freq[head_dim / 2]`, and the QK-norm weights
/// (`[head_dim]`) and epsilon when given.
fn check_rope(
    kernel: &'static str,
    inv_freq: &Buffer<f32>,
    norm: Option<QkNorm<'_>>,
    hd: usize,
) -> Result<()> {
    check_len(kernel, "inv_freq", inv_freq, hd / 2)?;
    if let Some(nw) = norm {
        check_len(kernel, "q_norm", nw.q, hd)?;
        check_len(kernel, "k_norm", nw.k, hd)?;
        ensure_shape!(
            nw.eps.is_finite() && nw.eps >= 0.0,
            kernel,
            "eps {} is not valid",
            nw.eps
        );
    }
    Ok(())
}

/// What the fused path reads: the normed rows `x` (`[≥ n][hidden]` bf16, row `t` at position
/// `start_pos + t`), the stacked Q|K|V weights `w` (`[(n_head + 2·n_kv) · head_dim][hidden]`,
/// Q then K then V heads) and their bias, and what [`Projected`] carries besides the
/// projection: RoPE's `inv_freq[head_dim / 2]` and the QK-norm weights.
#[derive(Clone, Copy)]
pub struct Projection<'a> {
    pub x: &'a TmaMatrix,
    pub w: &'a TmaMatrix,
    pub bias: Option<&'a Buffer<f32>>,
    pub inv_freq: &'a Buffer<f32>,
    pub norm: Option<QkNorm<'a>>,
}

/// Whether [`project_attention_input`] takes this head dimension: 128 only (each head is one
/// half of the GEMM's wide tile; any head counts).
pub fn fuses(head_dim: usize) -> bool {
    head_dim == QKV_HEAD_DIM
}

/// The Q|K|V projection of `input.x` and [`attention_input`] in one launch: the same outputs
/// (`q`, the cache rows `start_pos..start_pos + n`), with the projection rounded to bf16 as
/// `gemm_wgmma::matmul_bf16` stores it, but never written to memory. The QK-norm's sum of
/// squares adds in another order than [`attention_input`]'s (so with QK-norm the bits may
/// differ from the two-kernel path; without it they are the same). head_dim 128 only
/// ([`fuses`]); others are a shape error.
pub fn project_attention_input(
    dev: &Device,
    input: Projection<'_>,
    q: &TmaMatrix,
    cache: &KvCache,
    shape: AttentionShape,
) -> Result<()> {
    const K: &str = "gemm_wgmma_qkv_rope";
    let Projection {
        x,
        w,
        bias,
        inv_freq,
        norm,
    } = input;
    let hd = shape.head_dim;
    ensure_shape!(
        fuses(hd),
        K,
        "head_dim {hd}: the fused projection takes head_dim {QKV_HEAD_DIM} only"
    );
    let (n, start_pos) = shape.validate(K, cache)?;
    let (hidden, m) = (w.cols(), (shape.n_head + 2 * shape.n_kv) * hd);
    // Exactly: more rows would be read as heads the shape does not have.
    ensure_shape!(
        w.rows() == m,
        K,
        "w has {} rows, needs (n_head + 2·n_kv) · head_dim = {m}",
        w.rows()
    );
    x.check(K, "x", shape.n, hidden)?;
    if let Some(b) = bias {
        check_len(K, "bias", b, m)?;
    }
    q.check(K, "q", shape.n, shape.n_head * hd)?;
    check_rope(K, inv_freq, norm, hd)?;
    if n == 0 {
        return Ok(());
    }
    let tiles = shape.n.div_ceil(BM) * m.div_ceil(WIDE_BN);
    let cfg = super::persistent(dev, K, tiles, THREADS, WIDE_SHARED_BYTES)?;
    let (qn, kn, eps, norm_flag) = match norm {
        Some(nw) => (nw.q, nw.k, nw.eps, EPI_QK_NORM),
        None => (inv_freq, inv_freq, 0.0, 0), // unread without the flag
    };
    let flags = norm_flag | if bias.is_some() { EPI_BIAS } else { 0 };
    let (maps, b) = ((x.map(), w.map()), Buffer::maybe_input(bias));
    let (f, qn, kn) = (inv_freq.input(), qn.input(), kn.input());
    let (q, k, v) = (
        q.data().output(),
        cache.k.data().output(),
        cache.v_t.data().output(),
    );
    let heads = (shape.n_head as u32, shape.n_kv as u32);
    let (hidden, cap) = (hidden as u32, cache.capacity() as u32);
    gemm_wgmma::gemm_wgmma_qkv_rope::launch(
        dev, cfg, maps.0, maps.1, b, f, qn, kn, q, k, v, n, hidden, start_pos, heads.0, heads.1,
        cap, flags, eps,
    )
}
