//! The GEMM epilogues: what a consumer warpgroup does with a finished tile's accumulators
//! (registers straight to global memory). Kept apart from the pipeline in `gemm_wgmma.rs`;
//! every function here is `#[inline(always)]` so the accumulators never leave registers.

use super::{Acc, BN, EPI_ADD_TO_Y, EPI_BIAS, Split, Tile};
use crate::device::float::{bf16_to_f32, f32_to_bf16, pack_bf16x2};
use crate::device::math::silu;
use crate::device::*;
use seq_macro::seq;

/// Where a consumer thread's accumulators of half `half` (0, or 1 for the upper 128 columns of
/// a wide tile) land in the tile: `d[4j + e]` is row `row + 8·(e/2)`, column `8j + col + e%2`.
#[inline(always)]
pub(super) fn fragment_origin(split: Split, half: u32) -> (u32, u32) {
    let t = thread_idx().x % 128;
    let (row_off, col_off) = split.origin(thread_idx().x / 128 - 1);
    let (warp, lane) = (t / 32, t % 32);
    let col = col_off + BN as u32 * half + 2 * (lane % 4);
    (row_off + warp * 16 + lane / 4, col)
}

/// Calls `store(row, col, v0, v1)` for each pair of adjacent columns this consumer thread holds
/// in half `half` (tile-relative; `col` even). Unrolled, so the accumulators stay in registers.
#[inline(always)]
fn for_each_pair(split: Split, half: u32, acc: &Acc, mut store: impl FnMut(u32, u32, f32, f32)) {
    let (row, col) = fragment_origin(split, half);
    seq!(J in 0..16 {
        store(row, col + 8 * J, acc[4 * J], acc[4 * J + 1]);
        store(row + 8, col + 8 * J, acc[4 * J + 2], acc[4 * J + 3]);
    });
}

/// An output element type of the column epilogue ([`store_columns`]): how a value and an
/// aligned pair of adjacent values are written, and read back for `EPI_ADD_TO_Y`.
pub(super) trait OutElement: Copy {
    /// Whether `EPI_ADD_TO_Y` applies: the f32 residual stream only (the bf16 wrappers refuse
    /// it, and their kernels carry no read-back).
    const ADDS: bool;
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
/// `row0 + r < end` and columns `col0 + c < m`. A thread's two adjacent columns go as one store
/// where both exist and `m` is even (so the pair is aligned): for f32 four lanes then fill a
/// 32-byte sector; for bf16 it is as many store instructions for half the bytes.
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

/// The SwiGLU epilogue of a gate|up tile (per consumer and half: 64 gate columns, then the
/// matching 64 up columns): `h[r, out0 + c] = bf16(silu(gate) · up)` for rows `row0 + r < end`
/// and `out0 + c < m`, `out0` the block's first output feature. Adjacent outputs go as one
/// packed 4-byte store where both exist and `m` is even.
#[inline(always)]
fn store_swiglu(
    (split, half): (Split, u32),
    acc: &Acc,
    h: Out<u16>,
    (row0, end): (u32, u32),
    out0: u32,
    m: u32,
) {
    let (row, col) = fragment_origin(split, half);
    // A consumer's 128 tile columns make 64 outputs.
    let (row, col) = (row0 + row, out0 + col - col / BN as u32 * (BN / 2) as u32);
    let pairs = m.is_multiple_of(2);
    let h2 = h.cast::<u32>();
    seq!(J in 0..8 {
        seq!(R in 0..2 {
            let r = row + 8 * R;
            let c = col + 8 * J;
            let e = 2 * R;
            let out = |i: usize| silu(acc[4 * J + e + i]) * acc[4 * (J + 8) + e + i];
            if r < end {
                if pairs && c + 1 < m {
                    h2.set(((r * m + c) / 2) as usize, pack_bf16x2(out(0), out(1)));
                } else {
                    for i in 0..2 {
                        if c + (i as u32) < m {
                            h.set((r * m + c) as usize + i, f32_to_bf16(out(i)));
                        }
                    }
                }
            }
        });
    });
}

/// What a consumer does with a finished tile. A trait with `#[inline(always)]` methods rather
/// than a closure: LLVM declined to inline the larger epilogue closures, and then passed the
/// 128 accumulators through the stack.
pub(super) trait TileStore {
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc);
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
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc) {
        let (split, m, flags) = (self.split, self.m, self.flags);
        let (out, rows) = ((self.y, self.bias), (tile.row0, tile.end));
        let col0 = tile.col * split.cols();
        store_columns((split, 0), acc, out, rows, (col0, m), flags);
        if split.wide() {
            store_columns((split, 1), acc_hi, out, rows, (col0, m), flags);
        }
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
    fn store(&self, tile: Tile, acc: &Acc, acc_hi: &Acc) {
        let (split, h, m) = (self.split, self.h, self.m);
        let (rows, out0) = ((tile.row0, tile.end), tile.col * split.cols() / 2);
        store_swiglu((split, 0), acc, h, rows, out0, m);
        if split.wide() {
            store_swiglu((split, 1), acc_hi, h, rows, out0, m);
        }
    }
}
