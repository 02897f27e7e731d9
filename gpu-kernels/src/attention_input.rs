//! From the fused Q|K|V projection to what flash attention reads, in one pass: per token and
//! head, Qwen3's QK-norm (RMSNorm over the head), NEOX RoPE at the token's position, and bf16
//! stores: Q into the chunk's query matrix, K into the cache at its position, V into the
//! transposed V cache (`[n_kv · 128][capacity]`, see `flash_attention`).
//!
//! The arithmetic is `rms_norm_heads` followed by `rope_neox`, operation for operation (the
//! same strided partial sums and warp butterfly, the same f32 angle and range-reduced
//! sin/cos), so the values are those the separate kernels produced.
//!
//! Batch invariance: every (token, head) is computed by one warp from that token's row alone.

use crate::device::float::f32_to_bf16;
use crate::device::math::{fma, sincos, sqrt};
use crate::device::*;

/// The head dimension this kernel handles (the flash attention kernel's).
pub const HEAD_DIM: usize = 128;

kernel! {
    /// `qkv`: `[n][(n_head + 2·n_kv) · 128]` f32 (Q heads, then K heads, then V heads), row
    /// `t` the token at position `start_pos + t`; `inv_freq[64]`; `q_norm`/`k_norm`: `[128]` weights, used when
    /// `has_norm != 0`. Writes `q`: `[n][n_head · 128]` bf16; `k_cache[pos][n_kv · 128]` and
    /// `v_cache_t[n_kv · 128][capacity]` at `pos = start_pos + t`. Grid: (n, n_head + 2·n_kv);
    /// block: 32 threads (one warp per head vector, four dims per lane).
    pub fn attention_input_hd128(qkv: In<f32>, inv_freq: In<f32>, q_norm: In<f32>, k_norm: In<f32>, q: Out<u16>, k_cache: Out<u16>, v_cache_t: Out<u16>, start_pos: u32, n_head: u32, n_kv: u32, capacity: u32, has_norm: u32, eps: f32) {
        let (t, j) = (block_idx().x as usize, block_idx().y as usize);
        let (n_head, n_kv) = (n_head as usize, n_kv as usize);
        let lane = thread_idx().x as usize;
        let width = (n_head + 2 * n_kv) * HEAD_DIM;
        let pos = start_pos as usize + t;
        let kind = if j < n_head { 0 } else if j < n_head + n_kv { 1 } else { 2 };
        let src = t * width + j * HEAD_DIM;
        let mut v = [0.0f32; 4];
        for (i, x) in v.iter_mut().enumerate() {
            *x = qkv.at(src + lane + 32 * i);
        }
        if kind == 2 {
            let h = j - n_head - n_kv;
            for (i, x) in v.iter().enumerate() {
                let row = h * HEAD_DIM + lane + 32 * i;
                v_cache_t.set(row * capacity as usize + pos, f32_to_bf16(*x));
            }
            return;
        }
        if has_norm != 0 {
            let w = if kind == 0 { q_norm } else { k_norm };
            let mut sum_sq = 0.0f32;
            for x in v {
                sum_sq = fma(x, x, sum_sq);
            }
            let total = warp_sum_f32(sum_sq);
            let scale = 1.0 / sqrt(total / HEAD_DIM as f32 + eps);
            for (i, x) in v.iter_mut().enumerate() {
                *x = *x * scale * w.at(lane + 32 * i);
            }
        }
        // NEOX pairs (d, d + 64): this lane holds d = lane and lane + 32 with their partners.
        let mut out = [0.0f32; 4];
        for half in 0..2 {
            let pair = lane + 32 * half;
            let angle = pos as f32 * inv_freq.at(pair);
            let (sin, cos) = sincos(angle);
            let (x0, x1) = (v[half], v[half + 2]);
            out[half] = x0 * cos - x1 * sin;
            out[half + 2] = x0 * sin + x1 * cos;
        }
        let dst = if kind == 0 {
            q.offset(t * n_head * HEAD_DIM + j * HEAD_DIM)
        } else {
            k_cache.offset(pos * n_kv * HEAD_DIM + (j - n_head) * HEAD_DIM)
        };
        for (i, x) in out.iter().enumerate() {
            dst.set(lane + 32 * i, f32_to_bf16(*x));
        }
    }
}
