//! RMSNorm over rows (pre-attention / pre-FFN / final norm). Qwen3's QK-norm over heads is
//! fused into `attention_input`.
//!
//! Batch invariance: each row's sum of squares is reduced in an order fixed by the block size
//! alone (per-thread strided partials, then a fixed warp/block tree), never by the row count.

use crate::device::float::f32_to_bf16;
use crate::device::math::{fma, sqrt};
use crate::device::*;

/// Threads per row of `rms_norm_rows`. Fixed (not derived from the row count or width) so each
/// row's reduction order is the same in every launch: a condition of batch invariance.
pub const ROW_THREADS: u32 = 256;

shared_array!(fn norm_partials() -> [f32; 32]);

kernel! {
    /// `y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * w`, stored as bf16 in `y16` (the
    /// input of the tensor-core GEMMs) and, when `f32_too != 0`, also as f32 in `y32` (the
    /// shared-expert gate keeps full precision). Grid: one block per row; block: `ROW_THREADS` (any
    /// multiple of 32 works; the bits depend on it).
    pub fn rms_norm_rows(x: In<f32>, w: In<f32>, y16: Out<u16>, y32: Out<f32>, cols: u32, eps: f32, f32_too: u32) {
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
