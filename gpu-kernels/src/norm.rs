//! RMSNorm over rows (pre-attention / pre-FFN / final norm). Qwen3's QK-norm over heads is
//! fused into `attention_input`.
//!
//! Memory: a row is read once in 16-byte groups of `VEC` features, every load of a thread
//! issued before the first is used (one memory latency per row, not one per feature), and kept
//! in registers across the block reduction for rows up to `ROW_THREADS · VEC · HELD` features
//! (4096: every model kiln runs so far); wider rows re-read the groups past that from L2. The
//! outputs go as one 8-byte store of two packed bf16 pairs and one 16-byte f32 store per group.
//!
//! Batch invariance: each row's sum of squares is reduced in an order fixed by constants and
//! the width alone, never by the row count: thread `t` of the `ROW_THREADS` (declared, so other
//! block sizes are refused) sums groups `t`, `t + ROW_THREADS`, … in ascending order, the `VEC`
//! features of a group in order, then the fixed warp/block tree.

// `seq!` unrolls by substituting each literal index into arithmetic written for all of them
// (`P * STEP` with P = 0, 1); the lints below would flag those cases.
#![allow(clippy::identity_op, clippy::erasing_op)]

use crate::device::float::pack_bf16x2;
use crate::device::math::{fma, sqrt};
use crate::device::*;
use seq_macro::seq;

/// Threads per row of `rms_norm_rows`. Fixed (not derived from the row count or width) so each
/// row's reduction order is the same in every launch: a condition of batch invariance.
pub const ROW_THREADS: u32 = 128;
/// Features per group: one 16-byte f32 load. Widths must be multiples (a bf16 tensor map's
/// rows already are multiples of 8).
pub const VEC: usize = 4;
/// Groups a thread keeps in registers between the sum of squares and the scaling.
pub const HELD: usize = 8;

const STEP: usize = ROW_THREADS as usize;

shared_array!(fn norm_partials() -> [f32; 32]);

/// `rms_norm_rows` flag: also write the normed rows as f32 into `y32`.
pub const NORM_F32_TOO: u32 = 1;
/// `rms_norm_rows` flag: the row is `x + add`, written back to `x_sum` before it is normed
/// (the residual add of the layer's previous output).
pub const NORM_ADD: u32 = 2;

kernel! {
    threads = ROW_THREADS;
    /// `y[r, :] = v / sqrt(mean(v²) + eps) * w` for the row `v = x[r, :]`, or with `NORM_ADD`
    /// `v = x[r, :] + add[r, :]`, stored to `x_sum` (which may be `x`: the residual stream
    /// takes the previous projection's output here, in the add the GEMM's epilogue would do,
    /// so the same bits). `y` is stored as bf16 in `y16` (the input of the tensor-core GEMMs)
    /// and with `NORM_F32_TOO` also as f32 in `y32` (the shared-expert gate keeps full
    /// precision; `y32` may be `x` without `NORM_ADD`). `cols` a multiple of `VEC`. Grid: one
    /// block per row; block: `ROW_THREADS`.
    pub fn rms_norm_rows(x: In<f32>, add: In<f32>, x_sum: Out<f32>, w: In<f32>, y16: Out<u16>, y32: Out<f32>, cols: u32, eps: f32, flags: u32) {
        let cols = cols as usize;
        let (base, groups) = (block_idx().x as usize * cols, cols / VEC);
        let t = thread_idx().x as usize;
        let adds = flags & NORM_ADD != 0;
        // Unrolled by `seq!` (a `for` loop left `held` on the stack): `held` stays in registers.
        // Groups past the row stay zero, and add nothing. Every load is issued before the first
        // store of a sum: `x_sum` may be `x`, so a load after that store could not be moved
        // above it, and the loads would wait one at a time (seen: 19 µs where the plain norm
        // had taken 15).
        const { assert!(HELD == 8) };
        let mut held = [[0.0f32; VEC]; HELD];
        let mut added = [[0.0f32; VEC]; HELD];
        seq!(P in 0..8 {
            if t + P * STEP < groups {
                let at = base + (t + P * STEP) * VEC;
                held[P] = x.at4(at);
                if adds {
                    added[P] = add.at4(at);
                }
            }
        });
        if adds {
            seq!(P in 0..8 {
                if t + P * STEP < groups {
                    held[P] = core::array::from_fn(|e| held[P][e] + added[P][e]);
                    x_sum.set4(base + (t + P * STEP) * VEC, held[P]);
                }
            });
        }
        // Groups past the held ones (rows over 4096 features), with the add made and stored
        // (each thread reads and writes only its own groups, so `x_sum = x` is safe).
        let load = |g: usize| {
            let at = base + g * VEC;
            let mut v = x.at4(at);
            if adds {
                let a = add.at4(at);
                v = core::array::from_fn(|e| v[e] + a[e]);
                x_sum.set4(at, v);
            }
            v
        };
        let mut sum_sq = 0.0f32;
        seq!(P in 0..8 {
            for e in held[P] {
                sum_sq = fma(e, e, sum_sq);
            }
        });
        let mut g = t + HELD * STEP;
        while g < groups {
            for e in load(g) {
                sum_sq = fma(e, e, sum_sq);
            }
            g += STEP;
        }
        let total = block_sum_f32(sum_sq, norm_partials());
        let scale = 1.0 / sqrt(total / cols as f32 + eps);
        let pairs = y16.cast::<u32>();
        let store = |g: usize, v: [f32; VEC]| {
            let (at, wv) = (base + g * VEC, w.at4(g * VEC));
            let y: [f32; VEC] = core::array::from_fn(|e| v[e] * scale * wv[e]);
            pairs.set2(at / 2, [pack_bf16x2(y[0], y[1]), pack_bf16x2(y[2], y[3])]);
            if flags & NORM_F32_TOO != 0 {
                y32.set4(at, y);
            }
        };
        seq!(P in 0..8 {
            if t + P * STEP < groups {
                store(t + P * STEP, held[P]);
            }
        });
        // Rows wider than the held groups are read again: the sums from `x_sum` (written
        // above by this same thread), the plain rows from `x` (which `y32` may overwrite only
        // after this read).
        let row = if adds { x_sum.as_in() } else { x };
        let mut g = t + HELD * STEP;
        while g < groups {
            store(g, row.at4(base + g * VEC));
            g += STEP;
        }
    }
}
