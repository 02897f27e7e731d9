//! From the fused Q|K|V projection to what flash attention reads, in one pass: per token and
//! head, Qwen3's QK-norm (RMSNorm over the head), NEOX RoPE at the token's position, and bf16
//! stores: Q into the chunk's query matrix, K into the cache at its position, V into the
//! transposed V cache (`[n_kv · head_dim][capacity]`, see `flash_attention`). Two entries,
//! `attention_input_hd128` and `attention_input_hd64`, share one generic body ([`body`]) over
//! the head dimension `D` (a warp per head vector, `D / 32` dims per lane; NEOX pairs `(d,
//! d + D/2)`).
//!
//! The projection arrives in bf16 (the Q|K|V GEMM rounds each f32 sum once, bias included:
//! half the bytes of f32, and what transformers' bf16 projection gives too); Q and K are
//! widened exactly and normed and rotated in f32, V's bits go to the cache as they are. The
//! arithmetic is `rms_norm_heads` followed by `rope_neox`, operation for operation (the same
//! strided partial sums and warp butterfly, the same f32 angle and range-reduced sin/cos).
//!
//! Batch invariance: every (token, head) is computed by one warp from that token's row alone;
//! V is only moved (by the warp of its token, or in full groups of 32
//! tokens by 32 warps that each move a slice of the head for all 32: the same values either
//! way).

use crate::device::float::{bf16_to_f32, f32_to_bf16};
use crate::device::math::{fma, sincos, sqrt};
use crate::device::*;

/// The head dimension of `attention_input_hd128`.
pub const HEAD_DIM: usize = 128;
/// Head dimensions with an entry (`attention_input_hd64`, `attention_input_hd128`).
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// Head vectors (warps) per block. One warp per block capped a multiprocessor at 32 resident
/// warps (its block limit) for a latency-bound kernel; eight fill it.
pub const HEADS_PER_BLOCK: usize = 8;

/// The body of both entries for head dimension `D` (64 or 128): `qkv`: `[n][(n_head + 2·n_kv)
/// · D]` bf16 (Q heads, then K heads, then V heads), row `t` the token at position
/// `start_pos + t`; `inv_freq[D / 2]`; `q_norm`/`k_norm`: `[D]` weights, used when
/// `has_norm != 0`. Writes `q`: `[n][n_head · D]` bf16; `k_cache[pos][n_kv · D]` and
/// `v_cache_t[n_kv · D][capacity]` at `pos = start_pos + t`. Grid: (n, ⌈(n_head + 2·n_kv) /
/// HEADS_PER_BLOCK⌉); block: `32 · HEADS_PER_BLOCK` threads (one warp per head vector, `D / 32`
/// dims per lane).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn body<const D: usize>(
    qkv: In<u16>,
    inv_freq: In<f32>,
    q_norm: In<f32>,
    k_norm: In<f32>,
    q: Out<u16>,
    k_cache: Out<u16>,
    v_cache_t: Out<u16>,
    start_pos: u32,
    n_head: u32,
    n_kv: u32,
    capacity: u32,
    has_norm: u32,
    eps: f32,
) {
    const { assert!(D == 64 || D == 128) };
    // Dims per lane: lane holds d = lane + 32·i for i < per.
    let per = D / 32;
    let warp = thread_idx().x as usize / 32;
    let (t, j) = (
        block_idx().x as usize,
        block_idx().y as usize * HEADS_PER_BLOCK + warp,
    );
    let (n_head, n_kv) = (n_head as usize, n_kv as usize);
    if j >= n_head + 2 * n_kv {
        return;
    }
    let lane = thread_idx().x as usize % 32;
    let width = (n_head + 2 * n_kv) * D;
    let pos = start_pos as usize + t;
    let kind = if j < n_head {
        0
    } else if j < n_head + n_kv {
        1
    } else {
        2
    };
    if kind == 2 {
        let h = j - n_head - n_kv;
        let n = grid_dim().x as usize;
        let (group, slice) = (t / 32, t % 32);
        if group * 32 + 32 <= n {
            // In a full group of 32 tokens, block t writes dims `slice·per..` of the head for
            // all 32 (lane = token): each store then fills 64 contiguous bytes of a V cache
            // row, where one token per warp would touch 32·per rows with 2 bytes each.
            let tok = group * 32 + lane;
            let src = tok * width + j * D + slice * per;
            let pos = start_pos as usize + tok;
            for i in 0..per {
                let row = h * D + slice * per + i;
                v_cache_t.set(row * capacity as usize + pos, qkv.at(src + i));
            }
        } else {
            let src = t * width + j * D;
            for i in 0..per {
                let row = h * D + lane + 32 * i;
                v_cache_t.set(row * capacity as usize + pos, qkv.at(src + lane + 32 * i));
            }
        }
        return;
    }
    let src = t * width + j * D;
    let mut v = [0.0f32; 4];
    for (i, x) in v.iter_mut().take(per).enumerate() {
        *x = bf16_to_f32(qkv.at(src + lane + 32 * i));
    }
    if has_norm != 0 {
        let w = if kind == 0 { q_norm } else { k_norm };
        let mut sum_sq = 0.0f32;
        for x in v.into_iter().take(per) {
            sum_sq = fma(x, x, sum_sq);
        }
        let total = warp_sum_f32(sum_sq);
        let scale = 1.0 / sqrt(total / D as f32 + eps);
        for (i, x) in v.iter_mut().take(per).enumerate() {
            *x = *x * scale * w.at(lane + 32 * i);
        }
    }
    // NEOX pairs (d, d + D/2): this lane holds d = lane + 32·i for i < per / 2 with their
    // partners (i + per / 2).
    let mut out = [0.0f32; 4];
    for half in 0..per / 2 {
        let pair = lane + 32 * half;
        let angle = pos as f32 * inv_freq.at(pair);
        let (sin, cos) = sincos(angle);
        let (x0, x1) = (v[half], v[half + per / 2]);
        out[half] = x0 * cos - x1 * sin;
        out[half + per / 2] = x0 * sin + x1 * cos;
    }
    let dst = if kind == 0 {
        q.offset(t * n_head * D + j * D)
    } else {
        k_cache.offset(pos * n_kv * D + (j - n_head) * D)
    };
    for (i, x) in out.iter().take(per).enumerate() {
        dst.set(lane + 32 * i, f32_to_bf16(*x));
    }
}

kernel! {
    /// QK-norm + RoPE + KV append for head_dim 128 (see [`body`]).
    pub fn attention_input_hd128(qkv: In<u16>, inv_freq: In<f32>, q_norm: In<f32>, k_norm: In<f32>, q: Out<u16>, k_cache: Out<u16>, v_cache_t: Out<u16>, start_pos: u32, n_head: u32, n_kv: u32, capacity: u32, has_norm: u32, eps: f32) {
        body::<128>(qkv, inv_freq, q_norm, k_norm, q, k_cache, v_cache_t, start_pos, n_head, n_kv, capacity, has_norm, eps);
    }
}

kernel! {
    /// QK-norm + RoPE + KV append for head_dim 64 (see [`body`]).
    pub fn attention_input_hd64(qkv: In<u16>, inv_freq: In<f32>, q_norm: In<f32>, k_norm: In<f32>, q: Out<u16>, k_cache: Out<u16>, v_cache_t: Out<u16>, start_pos: u32, n_head: u32, n_kv: u32, capacity: u32, has_norm: u32, eps: f32) {
        body::<64>(qkv, inv_freq, q_norm, k_norm, q, k_cache, v_cache_t, start_pos, n_head, n_kv, capacity, has_norm, eps);
    }
}
