//! The Q|K|V projection's epilogue with `attention_input` fused in (head_dim 128): from a wide
//! tile's accumulators straight to what flash attention reads, so the projection never goes
//! through global memory. Per row (token at position `start_pos + row`) and head: the f32 sum
//! (+ bias), rounded to bf16 and widened back (the unfused path stores the projection in bf16
//! and `attention_input` reads it; transformers' bf16 projection rounds there too), then for Q
//! and K heads QK-norm (when on) and NEOX RoPE, stored bf16 into `q[t][n_head·D]` and
//! `k_cache[pos][n_kv·D]`; V's bf16 bits go to the transposed cache `v_cache_t[n_kv·D][capacity]`
//! at column `pos`. Q and K rows leave through the consumer warp's staging area
//! (`device::staging::WarpStage`), a whole 256-byte head row per pair of lanes' 16-byte stores; V's
//! transposed columns are stored from registers.
//!
//! Why it fits: D = 128 = `BN`, and a wide tile's column block `c` starts at `256·c`, so a
//! consumer's `acc` is exactly head `2c` and `acc_hi` head `2c + 1` (Q heads, then K, then V;
//! a half past the last head is not stored). A thread holds rows `row` and `row + 8` of each,
//! columns `8j + col + e` (`j < 16`, `e < 2`, `col = 2·(lane % 4)`): a row's head is spread
//! over the 4 lanes of a quad, and the NEOX partners `(d, d + 64)` are `j` and `j + 8` of the
//! same thread. The two halves may be of different kinds (a tile can hold K and V heads when
//! `n_head` or `n_kv` is odd); the kind is the same for the whole tile, so every branch on it is
//! warp-uniform, as the shuffles need.
//!
//! Arithmetic: `attention_input`'s operation for operation (the bf16 rounding of `acc + bias`
//! as the bf16 GEMM's, `scale = 1/√(Σx²/D + eps)`, `x·scale·w`, the angle `pos as f32 ·
//! inv_freq[pair]`, the same range-reduced `sincos`, `x0·cos − x1·sin`, `x0·sin + x1·cos`),
//! except the order of the sum of squares: here each thread sums its 32 values of the row (j
//! ascending, then the pair) with `fma`, then the quad adds them with xor-shuffles 1 and 2.
//! Without QK-norm the outputs are therefore bit-identical to the two-kernel path's.
//!
//! Batch invariance: every accumulator is the GEMM's (see `gemm_wgmma`: the same `wgmma`
//! sequence whatever the row count or the row's place in its tile). Everything after that reads
//! only the row's own values: the sum of squares is a fixed-order chain in each thread and a
//! fixed butterfly within the quad that holds the row (lanes of one quad share `lane / 4`, so
//! the same row, whatever tile or launch it is in); addition is commutative, so all four lanes
//! get the same total. The angle depends only on the position. Rows past `end` are computed
//! (from TMA's zero fill) and never stored; they do not feed any stored row.

use super::epilogue::{TileStore, fragment_origin, warp_rows, warp_stage};
use super::{Acc, BN, EPI_BIAS, Split, Tile};
use crate::device::float::{pack_bf16x2, unpack_bf16x2};
use crate::device::math::{fma, sincos, sqrt};
use crate::device::staging::WarpStage;
use crate::device::*;
use seq_macro::seq;

/// The head dimension of the fused kernel: one consumer half of a wide tile.
pub const QKV_HEAD_DIM: usize = BN;
/// Epilogue flag of the fused kernel: QK-norm with `q_norm`/`k_norm` (with `EPI_BIAS`).
pub const EPI_QK_NORM: u32 = 4;

const D: u32 = QKV_HEAD_DIM as u32;

/// Which part of the projection a head (a consumer half) is, with its index within the part.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Q(u32),
    K(u32),
    V(u32),
    /// Past the last V head (the last column block of an odd head count).
    Past,
}

impl Part {
    #[inline(always)]
    fn rotates(self) -> bool {
        matches!(self, Part::Q(_) | Part::K(_))
    }
}

/// The fused epilogue (see the module doc). `q_norm`/`k_norm` are read only with
/// `EPI_QK_NORM`, `bias` only with `EPI_BIAS`.
pub(super) struct QkvRopeStore {
    pub split: Split,
    pub bias: In<f32>,
    pub inv_freq: In<f32>,
    pub q_norm: In<f32>,
    pub k_norm: In<f32>,
    pub q: Out<u16>,
    pub k_cache: Out<u16>,
    pub v_cache_t: Out<u16>,
    pub start_pos: u32,
    pub n_head: u32,
    pub n_kv: u32,
    pub capacity: u32,
    pub flags: u32,
    pub eps: f32,
}

impl QkvRopeStore {
    #[inline(always)]
    fn part(&self, head: u32) -> Part {
        let (q, kv) = (self.n_head, self.n_kv);
        if head < q {
            Part::Q(head)
        } else if head < q + kv {
            Part::K(head - q)
        } else if head < q + 2 * kv {
            Part::V(head - q - kv)
        } else {
            Part::Past
        }
    }

    /// `bf16(acc + bias)` widened back, for head `head` (global column `head·D`); `col` is the
    /// thread's first column in the head. Pairs as `ColumnStore`'s bf16 pair stores round them
    /// (the bias added only with the flag: `-0.0 + 0.0` would change V's bits).
    #[inline(always)]
    fn rounded(&self, acc: &Acc, head: u32, col: u32) -> Acc {
        let mut x = *acc;
        let bias = self.flags & EPI_BIAS != 0;
        seq!(J in 0..16 {
            let b = if bias {
                self.bias.at2((head * D + col + 8 * J) as usize)
            } else {
                [0.0; 2]
            };
            seq!(E in 0..2 {
                let i = 4 * J + 2 * E;
                let mut v = [x[i], x[i + 1]];
                if bias {
                    v = [v[0] + b[0], v[1] + b[1]];
                }
                [x[i], x[i + 1]] = unpack_bf16x2(pack_bf16x2(v[0], v[1]));
            });
        });
        x
    }

    /// QK-norm's `1/√(Σx²/D + eps)` of the row whose values start at `x[r]` (`r` = 0 or 2:
    /// `row` or `row + 8`); the same in the quad's four lanes.
    #[inline(always)]
    fn scale(&self, x: &Acc, r: usize) -> f32 {
        let mut sum_sq = 0.0f32;
        seq!(J in 0..16 {
            sum_sq = fma(x[4 * J + r], x[4 * J + r], sum_sq);
            sum_sq = fma(x[4 * J + r + 1], x[4 * J + r + 1], sum_sq);
        });
        sum_sq += shfl_xor_f32(sum_sq, 1);
        sum_sq += shfl_xor_f32(sum_sq, 2);
        1.0 / sqrt(sum_sq / D as f32 + self.eps)
    }

    /// A Q or K head's row for token `t` (position `pos`) in `q` or `k_cache` (as pairs:
    /// `u32`), with the element index of its first column.
    #[inline(always)]
    fn rope_target(&self, part: Part, t: u32, pos: u32) -> (Out<u32>, u32) {
        match part {
            Part::Q(h) => (self.q.cast(), t * self.n_head * D + h * D),
            // Only Q and K heads rotate; `V` and `Past` never get here.
            Part::K(h) | Part::V(h) => (self.k_cache.cast(), (pos * self.n_kv + h) * D),
            Part::Past => (self.k_cache.cast(), pos * self.n_kv * D),
        }
    }

    /// QK-norm (with the flag) and the rotation of the NEOX pairs `(c + e, c + e + 64)`, `e <
    /// 2`, of a Q or K head, whose values sit at `x[i + e]` and `x[i + 32 + e]`; written as two
    /// packed pairs to staging row `srow` (a row of the head: byte `2c` and `2(c + 64)`).
    #[inline(always)]
    fn rotate(
        &self,
        x: &Acc,
        (i, c): (usize, u32),
        rot: [(f32, f32); 2],
        (scale, part): (f32, Part),
        (stage, srow): (WarpStage, u32),
    ) {
        let w = if let Part::Q(_) = part {
            self.q_norm
        } else {
            self.k_norm
        };
        let (mut lo, mut hi) = ([x[i], x[i + 1]], [x[i + 32], x[i + 33]]);
        if self.flags & EPI_QK_NORM != 0 {
            let (w_lo, w_hi) = (w.at2(c as usize), w.at2((c + 64) as usize));
            for e in 0..2 {
                lo[e] = lo[e] * scale * w_lo[e];
                hi[e] = hi[e] * scale * w_hi[e];
            }
        }
        let mut out_lo = [0.0f32; 2];
        let mut out_hi = [0.0f32; 2];
        for e in 0..2 {
            let (sin, cos) = rot[e];
            let (x0, x1) = (lo[e], hi[e]);
            out_lo[e] = x0 * cos - x1 * sin;
            out_hi[e] = x0 * sin + x1 * cos;
        }
        stage.put(srow, 2 * c, pack_bf16x2(out_lo[0], out_lo[1]));
        stage.put(srow, 2 * (c + 64), pack_bf16x2(out_hi[0], out_hi[1]));
    }

    /// V head `h`'s row starting at `x[r]` into the transposed cache at column `pos` (its bf16
    /// bits: `x` is exact in bf16).
    #[inline(always)]
    fn store_v(&self, x: &Acc, r: usize, (h, col): (u32, u32), pos: u32) {
        seq!(J in 0..16 {
            seq!(E in 0..2 {
                let d = h * D + col + 8 * J + E;
                let bits = (x[4 * J + r + E].to_bits() >> 16) as u16;
                self.v_cache_t.set((d * self.capacity + pos) as usize, bits);
            });
        });
    }
}

impl TileStore for QkvRopeStore {
    #[inline(always)]
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc, staging: u32) {
        let (row, col) = fragment_origin(self.split, 0);
        let (warp_row, frag_row, _) = warp_rows(self.split);
        let stage = warp_stage(staging, self.split.shared_bytes(), 0);
        let heads = (2 * tile.col, 2 * tile.col + 1);
        let (part_lo, part_hi) = (self.part(heads.0), self.part(heads.1));
        // `Past` reads no bias (there is none past the last column).
        let x_lo = if part_lo == Part::Past {
            *acc
        } else {
            self.rounded(acc, heads.0, col)
        };
        let x_hi = if part_hi == Part::Past {
            *acc_hi
        } else {
            self.rounded(acc_hi, heads.1, col)
        };
        let norm = self.flags & EPI_QK_NORM != 0;
        // Per round R, the warp's rows `8R..8R + 8` of both heads fill its 16 staging rows (the
        // low head's first), then go out a whole 256-byte head row at a time.
        seq!(R in 0..2 {
            let t = tile.row0 + row + 8 * R;
            let (pos, live) = (self.start_pos + t, t < tile.end);
            let r = 2 * R;
            let s_lo = if norm && part_lo.rotates() { self.scale(&x_lo, r) } else { 1.0 };
            let s_hi = if norm && part_hi.rotates() { self.scale(&x_hi, r) } else { 1.0 };
            if part_lo.rotates() || part_hi.rotates() {
                seq!(J in 0..8 {
                    let c = col + 8 * J;
                    let f = self.inv_freq.at2(c as usize);
                    // One sin/cos per pair for both heads: they share the position.
                    let rot = [sincos(pos as f32 * f[0]), sincos(pos as f32 * f[1])];
                    let at = (4 * J + r, c);
                    if part_lo.rotates() {
                        self.rotate(&x_lo, at, rot, (s_lo, part_lo), (stage, frag_row));
                    }
                    if part_hi.rotates() {
                        self.rotate(&x_hi, at, rot, (s_hi, part_hi), (stage, 8 + frag_row));
                    }
                });
                stage.drain(2 * D, |s, k, w| {
                    let part = if s < 8 { part_lo } else { part_hi };
                    let t = tile.row0 + warp_row + 8 * R + s % 8;
                    if part.rotates() && t < tile.end {
                        let (out, dst) = self.rope_target(part, t, self.start_pos + t);
                        out.set4(((dst + 8 * k) / 2) as usize, w);
                    }
                });
            }
            if live {
                if let Part::V(h) = part_lo {
                    self.store_v(&x_lo, r, (h, col), pos);
                }
                if let Part::V(h) = part_hi {
                    self.store_v(&x_hi, r, (h, col), pos);
                }
            }
        });
    }
}
