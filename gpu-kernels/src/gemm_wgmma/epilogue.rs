//! The GEMM epilogues: what a consumer warpgroup does with a finished tile's accumulators.
//! Kept apart from the pipeline in `gemm_wgmma.rs`; every function here is `#[inline(always)]`
//! so the accumulators never leave registers.
//!
//! Column and SwiGLU outputs (and qkv_rope's Q and K rows) leave through each consumer
//! warp's `device::staging::WarpStage`, in whole 16-byte stores (why: that module). Rows,
//! columns and values are what they were; only the order of the stores changed.

use super::{Acc, BN, EPI_ADD_TO_Y, EPI_BIAS, Split, Tile};
use crate::device::float::{bf16_to_f32, f32_to_bf16, pack_bf16x2};
use crate::device::math::silu;
use crate::device::staging::{STAGE_ROW_BYTES, WARP_STAGE_BYTES, WarpStage};
use crate::device::*;
use seq_macro::seq;

/// Where a consumer thread's accumulators of half `half` (0, or 1 for the upper 128 columns of
/// a wide tile) land in the tile: `d[4j + e]` is row `row + 8·(e/2)`, column `8j + col + e%2`.
#[inline(always)]
pub(super) fn fragment_origin(split: Split, half: u32) -> (u32, u32) {
    let (warp_row, frag_row, frag_col) = warp_rows(split);
    let (_, col_off) = split.origin(thread_idx().x / 128 - 1);
    (warp_row + frag_row, col_off + BN as u32 * half + frag_col)
}

/// Calls `store(row, col, v0, v1)` for each pair of adjacent columns this consumer thread holds
/// in half `half` (tile-relative; `col` even; a half-width tile's lower half of `acc` only).
/// Unrolled, so the accumulators stay in registers.
#[inline(always)]
fn for_each_pair(split: Split, half: u32, acc: &Acc, mut store: impl FnMut(u32, u32, f32, f32)) {
    let (row, col) = fragment_origin(split, half);
    seq!(J in 0..16 {
        if 8 * J < split.half_cols() {
            store(row, col + 8 * J, acc[4 * J], acc[4 * J + 1]);
            store(row + 8, col + 8 * J, acc[4 * J + 2], acc[4 * J + 3]);
        }
    });
}

/// Shared memory the epilogue stages through: a [`WarpStage`] per consumer warp (two
/// warpgroups), in warp order.
pub(super) const STAGING_BYTES: u32 = 8 * WARP_STAGE_BYTES;

/// The calling consumer warp's staging area in the region at shared address `staging`.
#[inline(always)]
pub(super) fn warp_stage(staging: u32, shared_bytes: u32, shift: u32) -> WarpStage {
    let warp = thread_idx().x / 32 - 4;
    WarpStage::at(staging + warp * WARP_STAGE_BYTES, shared_bytes, shift)
}

/// Where this consumer warp's 16 rows start in the tile (the staging area's row 0), and the
/// lane's fragment row (0..8; +8 for the second row of each pair) and column offset (even).
#[inline(always)]
pub(super) fn warp_rows(split: Split) -> (u32, u32, u32) {
    let t = thread_idx().x % 128;
    let (row_off, _) = split.origin(thread_idx().x / 128 - 1);
    let lane = t % 32;
    (row_off + t / 32 * 16, lane / 4, 2 * (lane % 4))
}

/// An output element type of the column epilogue ([`store_columns`]): how a value and an
/// aligned pair of adjacent values are written, and read back for `EPI_ADD_TO_Y`.
pub(super) trait OutElement: Copy {
    /// Whether `EPI_ADD_TO_Y` applies: the f32 residual stream only (the bf16 wrappers refuse
    /// it, and their kernels carry no read-back).
    const ADDS: bool;
    /// Bytes per element.
    const BYTES: u32;
    /// Writes an aligned pair of adjacent values at `byte` of staging row `row`.
    fn stage_pair(stage: WarpStage, row: u32, byte: u32, v: [f32; 2]);
    /// Stores one staged 16-byte chunk at element `at` (a multiple of `16 / BYTES`); with
    /// `add`, `y += chunk` instead.
    fn store_chunk(self, at: usize, w: [u32; 4], add: bool);
    fn set(self, at: usize, v: f32);
    /// `at` even: one store of both values.
    fn set_pair(self, at: usize, v: [f32; 2]);
    fn get(self, at: usize) -> f32;
    /// `at` even: one load of both values.
    fn get_pair(self, at: usize) -> [f32; 2];
}

/// f32 out: a pair is one 8-byte store (`st.global.v2`).
impl OutElement for Out<f32> {
    const ADDS: bool = true;
    const BYTES: u32 = 4;
    #[inline(always)]
    fn stage_pair(stage: WarpStage, row: u32, byte: u32, v: [f32; 2]) {
        stage.put2(row, byte, v.map(f32::to_bits));
    }
    #[inline(always)]
    fn store_chunk(self, at: usize, w: [u32; 4], add: bool) {
        let mut v = w.map(f32::from_bits);
        if add {
            let old = self.as_in().at4(at);
            v = core::array::from_fn(|e| v[e] + old[e]);
        }
        self.set4(at, v);
    }
    #[inline(always)]
    fn set(self, at: usize, v: f32) {
        Out::set(self, at, v);
    }
    #[inline(always)]
    fn set_pair(self, at: usize, v: [f32; 2]) {
        self.set2(at, v);
    }
    #[inline(always)]
    fn get(self, at: usize) -> f32 {
        self.at(at)
    }
    #[inline(always)]
    fn get_pair(self, at: usize) -> [f32; 2] {
        self.as_in().at2(at)
    }
}

/// bf16 out, each value rounded once (nearest even): a pair is one packed 4-byte store.
impl OutElement for Out<u16> {
    const ADDS: bool = false;
    const BYTES: u32 = 2;
    #[inline(always)]
    fn stage_pair(stage: WarpStage, row: u32, byte: u32, v: [f32; 2]) {
        stage.put(row, byte, pack_bf16x2(v[0], v[1]));
    }
    #[inline(always)]
    fn store_chunk(self, at: usize, w: [u32; 4], _add: bool) {
        self.cast::<u32>().set4(at / 2, w);
    }
    #[inline(always)]
    fn set(self, at: usize, v: f32) {
        Out::set(self, at, f32_to_bf16(v));
    }
    #[inline(always)]
    fn set_pair(self, at: usize, v: [f32; 2]) {
        self.cast::<u32>().set(at / 2, pack_bf16x2(v[0], v[1]));
    }
    #[inline(always)]
    fn get(self, at: usize) -> f32 {
        bf16_to_f32(self.at(at))
    }
    #[inline(always)]
    fn get_pair(self, at: usize) -> [f32; 2] {
        [self.get(at), self.get(at + 1)]
    }
}

/// The column epilogue: `y[r, c] = acc [+ bias[c]] [+ y[r, c]]` (flags `EPI_BIAS`,
/// `EPI_ADD_TO_Y` where `O::ADDS`; the sum in f32, then one conversion to `y`'s element type) for rows
/// `row0 + r < end` and columns `col0 + c < m`, stored from registers: the path for rows that
/// are not whole 16-byte chunks (`store_columns_staged` takes the rest). A thread's two
/// adjacent columns go as one store where both exist and `m` is even (so the pair is aligned).
#[inline(always)]
fn store_columns<O: OutElement>(
    (split, half): (Split, u32),
    acc: &Acc,
    (y, bias): (O, In<f32>),
    (row0, end): (u32, u32),
    (col0, m): (u32, u32),
    flags: u32,
) {
    for_each_pair(split, half, acc, |r, c, v0, v1| {
        let (r, c) = (row0 + r, col0 + c);
        if r >= end {
            return;
        }
        let at = (r * m + c) as usize;
        if c + 1 < m && m.is_multiple_of(2) {
            let mut v = [v0, v1];
            if flags & EPI_BIAS != 0 {
                let b = bias.at2(c as usize);
                v = [v[0] + b[0], v[1] + b[1]];
            }
            if O::ADDS && flags & EPI_ADD_TO_Y != 0 {
                let old = y.get_pair(at);
                v = [v[0] + old[0], v[1] + old[1]];
            }
            y.set_pair(at, v);
            return;
        }
        for (i, mut v) in [(0, v0), (1, v1)] {
            if c + i < m {
                if flags & EPI_BIAS != 0 {
                    v += bias.at((c + i) as usize);
                }
                if O::ADDS && flags & EPI_ADD_TO_Y != 0 {
                    v += y.get(at + i as usize);
                }
                y.set(at + i as usize, v);
            }
        }
    });
}

/// [`store_columns`] through this warp's staging area, for `m` a multiple of `16 / O::BYTES`
/// (whole chunks are in or out): the same values (`acc [+ bias]`, then `+ y` in the chunk
/// store), stored a chunk at a time. f32 rows take two rounds of 64 columns per half.
#[inline(always)]
fn store_columns_staged<O: OutElement>(
    (split, half): (Split, u32),
    acc: &Acc,
    stage: WarpStage,
    (y, bias): (O, In<f32>),
    (row0, end): (u32, u32),
    (col0, m): (u32, u32),
    flags: u32,
) {
    let (warp_row, frag_row, frag_col) = warp_rows(split);
    let rounds = O::BYTES / 2;
    let round_cols = BN as u32 / rounds;
    let col0 = col0 + BN as u32 * half;
    let add = O::ADDS && flags & EPI_ADD_TO_Y != 0;
    // A half-width tile's columns end at `half_cols`: its later rounds, fragments and chunks
    // (whose staging holds nothing of this tile) are skipped.
    let cols = split.half_cols();
    seq!(Q in 0..2 {
        if Q < rounds && Q * round_cols < cols {
            seq!(J in 0..16 {
                if J * rounds / 16 == Q && 8 * J < cols {
                    let c = 8 * J + frag_col;
                    seq!(R in 0..2 {
                        let mut v = [acc[4 * J + 2 * R], acc[4 * J + 2 * R + 1]];
                        if flags & EPI_BIAS != 0 && col0 + c < m {
                            let b = bias.at2((col0 + c) as usize);
                            v = [v[0] + b[0], v[1] + b[1]];
                        }
                        let byte = (c - Q * round_cols) * O::BYTES;
                        O::stage_pair(stage, frag_row + 8 * R, byte, v);
                    });
                }
            });
            stage.drain((cols * O::BYTES).min(STAGE_ROW_BYTES), |r, k, w| {
                let (row, col) = (row0 + warp_row + r, col0 + Q * round_cols + k * 16 / O::BYTES);
                if row < end && col < m {
                    y.store_chunk((row * m + col) as usize, w, add);
                }
            });
        }
    });
}

/// The SwiGLU epilogue of a gate|up tile (per consumer and half: 64 gate columns, then the
/// matching 64 up columns): `h[r, out0 + c] = bf16(silu(gate) · up)` for rows `row0 + r < end`
/// and `out0 + c < m`, `out0` the block's first output feature. Through this warp's staging
/// area: a consumer's outputs of a row (64 per half) are one staging row. `m` must be a
/// multiple of 8 (`h` is a TMA matrix, whose rows are whole 16-byte chunks).
#[inline(always)]
fn store_swiglu(
    split: Split,
    (acc, acc_hi): (&Acc, &Acc),
    stage: WarpStage,
    h: Out<u16>,
    (row0, end): (u32, u32),
    out0: u32,
    m: u32,
) {
    let (warp_row, frag_row, frag_col) = warp_rows(split);
    let halves = if split.wide() { 2 } else { 1 };
    seq!(HALF in 0..2 {
        if HALF < halves {
            let acc = if HALF == 0 { acc } else { acc_hi };
            seq!(J in 0..8 {
                seq!(R in 0..2 {
                    let e = 2 * R;
                    let out = |i: usize| silu(acc[4 * J + e + i]) * acc[4 * (J + 8) + e + i];
                    let byte = 2 * (64 * HALF + 8 * J + frag_col);
                    stage.put(frag_row + 8 * R, byte, pack_bf16x2(out(0), out(1)));
                });
            });
        }
    });
    stage.drain(128 * halves, |r, k, w| {
        let (row, col) = (row0 + warp_row + r, out0 + 8 * k);
        if row < end && col < m {
            h.cast::<u32>().set4(((row * m + col) / 2) as usize, w);
        }
    });
}

/// What a consumer does with a finished tile. A trait with `#[inline(always)]` methods rather
/// than a closure: LLVM declined to inline the larger epilogue closures, and then passed the
/// 128 accumulators through the stack.
pub(super) trait TileStore {
    /// `staging`: the shared address of the staging region ([`STAGING_BYTES`]).
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc, staging: u32);
}

/// Columns out ([`store_columns`]), f32 (`ColumnStore<Out<f32>>`) or bf16: tile column block
/// `c` is output columns `c · cols..`.
pub(super) struct ColumnStore<O> {
    pub split: Split,
    pub y: O,
    pub bias: In<f32>,
    pub m: u32,
    pub flags: u32,
}

impl<O: OutElement> TileStore for ColumnStore<O> {
    #[inline(always)]
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc, staging: u32) {
        let (split, m, flags) = (self.split, self.m, self.flags);
        let (out, rows) = ((self.y, self.bias), (tile.row0, tile.end));
        let col0 = tile.col * split.cols();
        if m.is_multiple_of(16 / O::BYTES) {
            let stage = warp_stage(staging, split.shared_bytes(), O::BYTES / 4);
            store_columns_staged((split, 0), acc, stage, out, rows, (col0, m), flags);
            if split.wide() {
                store_columns_staged((split, 1), acc_hi, stage, out, rows, (col0, m), flags);
            }
            return;
        }
        store_columns((split, 0), acc, out, rows, (col0, m), flags);
        if split.wide() {
            store_columns((split, 1), acc_hi, out, rows, (col0, m), flags);
        }
    }
}

/// f32 columns out of a K-segmented launch: the tile's K segment `s` (its first slice over
/// `segment` slices per segment) writes plane `s` (`plane` elements from the last) of `y`.
pub(super) struct SegmentStore {
    pub split: Split,
    pub y: Out<f32>,
    pub m: u32,
    pub segment: u32,
    pub plane: u32,
}

impl TileStore for SegmentStore {
    #[inline(always)]
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc, staging: u32) {
        let seg = (tile.slices.0 / self.segment) as usize;
        let y = self.y.offset(seg * self.plane as usize);
        // No bias (flags 0): `bias` is never read.
        let (split, bias, m, flags) = (self.split, y.as_in(), self.m, 0);
        ColumnStore {
            split,
            y,
            bias,
            m,
            flags,
        }
        .store(tile, acc, acc_hi, staging);
    }
}

/// SwiGLU out ([`store_swiglu`]): each 128 tile columns make 64 outputs.
pub(super) struct SwigluStore {
    pub split: Split,
    pub h: Out<u16>,
    pub m: u32,
}

impl TileStore for SwigluStore {
    #[inline(always)]
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc, staging: u32) {
        let (split, h, m) = (self.split, self.h, self.m);
        let (rows, out0) = ((tile.row0, tile.end), tile.col * split.cols() / 2);
        let stage = warp_stage(staging, split.shared_bytes(), 0);
        store_swiglu(split, (acc, acc_hi), stage, h, rows, out0, m);
    }
}
