//! RMSNorm over rows (pre-attention / pre-FFN / final norm) and over heads (Qwen3's QK-norm).
//!
//! Batch invariance: each row's sum of squares is reduced in an order fixed by the block size
//! alone (per-thread strided partials, then a fixed warp/block tree), never by the row count.

use crate::device::float::f32_to_bf16;
use crate::device::math::{fma, sqrt};
use crate::device::*;

/// Threads per row of `rms_norm_rows`. Fixed (not derived from the row count or width) so each
/// row's reduction order is the same in every launch: a condition of batch invariance.
pub const ROW_THREADS: u32 = 256;
/// Threads per block of `rms_norm_heads` (a warp per head vector, so any multiple of 32 gives
/// the same bits; fixed like the others).
pub const HEAD_THREADS: u32 = 256;

shared_array!(fn norm_partials() -> [f32; 32]);

kernel! {
    /// `y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * w`. Grid: one block per row; block:
    /// `ROW_THREADS` (any multiple of 32 works; the bits depend on it).
    pub fn rms_norm_rows(x: In<f32>, w: In<f32>, y: Out<f32>, cols: u32, eps: f32) {
        let cols = cols as usize;
        let base = block_idx().x as usize * cols;
        let (t, stride) = (thread_idx().x as usize, block_dim().x as usize);
        let mut sum_sq = 0.0f32;
        let mut i = t;
        while i < cols {
            let v = x.at(base + i);
            sum_sq = fma(v, v, sum_sq);
            i += stride;
        }
        let total = block_sum_f32(sum_sq, norm_partials());
        let scale = 1.0 / sqrt(total / cols as f32 + eps);
        let mut i = t;
        while i < cols {
            y.set(base + i, x.at(base + i) * scale * w.at(i));
            i += stride;
        }
    }
}

kernel! {
    /// `rms_norm_rows` with bf16 output, the input of the tensor-core GEMMs (the same bits
    /// they used to round to themselves), and optionally (`f32_too != 0`) the f32 row in
    /// `y32` as well (the MoE router keeps full precision). The same reduction as
    /// `rms_norm_rows`. Grid: one block per row; block: `ROW_THREADS`.
    pub fn rms_norm_rows_bf16(x: In<f32>, w: In<f32>, y16: Out<u16>, y32: Out<f32>, cols: u32, eps: f32, f32_too: u32) {
        let cols = cols as usize;
        let base = block_idx().x as usize * cols;
        let (t, stride) = (thread_idx().x as usize, block_dim().x as usize);
        let mut sum_sq = 0.0f32;
        let mut i = t;
        while i < cols {
            let v = x.at(base + i);
            sum_sq = fma(v, v, sum_sq);
            i += stride;
        }
        let total = block_sum_f32(sum_sq, norm_partials());
        let scale = 1.0 / sqrt(total / cols as f32 + eps);
        let mut i = t;
        while i < cols {
            let v = x.at(base + i) * scale * w.at(i);
            y16.set(base + i, f32_to_bf16(v));
            if f32_too != 0 {
                y32.set(base + i, v);
            }
            i += stride;
        }
    }
}

kernel! {
    /// Per-head RMSNorm: `x` is `groups` contiguous vectors of `head_dim`, each normalised with
    /// the same weight `w[head_dim]`. One warp per vector; block: a multiple of 32 threads. `y`
    /// may alias `x` (each lane reads its elements before writing them).
    pub fn rms_norm_heads(x: In<f32>, w: In<f32>, y: Out<f32>, groups: u32, head_dim: u32, eps: f32) {
        let warps_per_block = block_dim().x / WARP_SIZE;
        let group = block_idx().x * warps_per_block + warp_id();
        // The whole warp takes the same branch, so the shuffles below stay warp-uniform.
        if group >= groups {
            return;
        }
        let hd = head_dim as usize;
        let base = group as usize * hd;
        let lane = lane_id() as usize;
        let mut sum_sq = 0.0f32;
        let mut i = lane;
        while i < hd {
            let v = x.at(base + i);
            sum_sq = fma(v, v, sum_sq);
            i += WARP_SIZE as usize;
        }
        let total = warp_sum_f32(sum_sq);
        let scale = 1.0 / sqrt(total / hd as f32 + eps);
        let mut i = lane;
        while i < hd {
            y.set(base + i, x.at(base + i) * scale * w.at(i));
            i += WARP_SIZE as usize;
        }
    }
}
