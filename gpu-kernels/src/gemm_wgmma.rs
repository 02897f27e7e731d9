//! Hopper GEMM: `y[r, c] = Σ_k x[r, k] · w[c, k]` with bf16 `x` and `w` (GGUF `[out][in]`
//! order), f32 accumulation on tensor cores (`wgmma`), tiles brought in by TMA.
//!
//! Block: 3 warpgroups (384 threads). Warpgroup 0 is the producer: one thread streams 64-wide
//! K slices of the x tile (`BM` rows) and the w tile (`BN` rows) into a ring of `STAGES`
//! shared-memory slots, each guarded by a "full" and an "empty" mbarrier. Warpgroups 1 and 2
//! are consumers: each owns 64 rows of the tile and runs four `m64nBNk16` products per slot,
//! keeping one batch in flight, then releases the slot. The epilogue goes from registers
//! straight to global memory.
//!
//! Batch invariance: every output element is one accumulator in one thread, fed by the same
//! sequence of `wgmma` instructions (K slices in ascending order, four k16 steps each) whatever
//! the number of rows, the tile a row falls in, or its neighbours; rows past the end of `x`
//! read as zeros (TMA's out-of-bounds fill) and are never stored; K past the end is zero-filled,
//! which depends on K alone. No split-K.

// `seq!` unrolls loops by substituting each literal index into arithmetic written for all of
// them (`8 * R`, `4 * J + 0`, `KK / 4` with KK = 0, …); the lints below would flag the cases
// that happen to be identities.
#![allow(clippy::identity_op, clippy::erasing_op, clippy::eq_op)]

use crate::device::async_copy::{
    Mbarrier, TensorMap, acquire_tensor_map, fence_mbarrier_init, prefetch_tensor_map, tma_load_2d,
};
use crate::device::float::f32_to_bf16;
use crate::device::math::silu;
use crate::device::tensor_core::{
    Accumulators, WgmmaDesc, swizzle_aligned_shared_base, wgmma_commit, wgmma_fence,
    wgmma_m64n128k16_ss, wgmma_wait,
};
use crate::device::*;
use seq_macro::seq;

/// Rows (tokens) per block: two consumer warpgroups of 64.
pub const BM: usize = 128;
/// Output columns per block.
pub const BN: usize = 128;
/// K per pipeline slot: one 128-byte swizzled row of bf16.
pub const BK: usize = 64;
/// Pipeline depth.
pub const STAGES: usize = 5;
/// Threads per block: producer + two consumer warpgroups.
pub const THREADS: u32 = 384;
const A_BYTES: u32 = (BM * BK * 2) as u32;
const B_BYTES: u32 = (BN * BK * 2) as u32;
/// Dynamic shared memory a launch must provide (tiles, barriers, and slack to align to 1024).
pub const SHARED_BYTES: u32 = STAGES as u32 * (A_BYTES + B_BYTES) + 2 * 8 * STAGES as u32 + 1024;

/// Output columns per block of the wide dense kernels (`*_wide`): each consumer keeps two
/// 128-column accumulators, so a block reads its A tile once per 256 columns instead of 128.
pub const WIDE_BN: usize = 2 * BN;
const WIDE_STAGES: usize = 4;
/// Dynamic shared memory of the wide dense kernels.
pub const WIDE_SHARED_BYTES: u32 =
    WIDE_STAGES as u32 * (A_BYTES + 2 * B_BYTES) + 2 * 8 * WIDE_STAGES as u32 + 1024;

/// Rows per tile of the grouped (MoE) GEMMs: they use the wide dense tile (128 × `WIDE_BN`),
/// whose A operand is read through a map with boxes of `GROUPED_BM` rows.
pub const GROUPED_BM: usize = BM;
/// Output columns per block of the grouped GEMMs.
pub const GROUPED_BN: usize = WIDE_BN;
/// Dynamic shared memory of the grouped GEMMs.
pub const GROUPED_SHARED_BYTES: u32 = WIDE_SHARED_BYTES;

/// How the two consumer warpgroups share a block's tile.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Dense: 128 rows × `BN` columns, consumer `c` takes rows `64c..`.
    Rows,
    /// Wide (dense and grouped): 128 rows × `WIDE_BN` columns, consumer `c` takes rows
    /// `64c..`, as two 128-column halves.
    WideRows,
}

impl Split {
    const fn stages(self) -> usize {
        match self {
            Split::Rows => STAGES,
            Split::WideRows => WIDE_STAGES,
        }
    }
    const fn a_bytes(self) -> u32 {
        A_BYTES
    }
    const fn b_bytes(self) -> u32 {
        match self {
            Split::Rows => B_BYTES,
            Split::WideRows => 2 * B_BYTES,
        }
    }
    /// Whether each consumer keeps a second 128-column accumulator (columns `+BN`).
    const fn wide(self) -> bool {
        matches!(self, Split::WideRows)
    }
    /// (row, column) of consumer `c`'s part of the tile.
    const fn origin(self, c: u32) -> (u32, u32) {
        (64 * c, 0)
    }
}

/// Epilogue flags.
pub const EPI_BIAS: u32 = 1;
pub const EPI_ADD_TO_Y: u32 = 2;

/// Shared-memory layout of one block.
#[derive(Clone, Copy)]
struct Smem {
    base: u32,
    split: Split,
}

impl Smem {
    #[inline(always)]
    fn new(split: Split) -> Self {
        Smem {
            base: swizzle_aligned_shared_base(),
            split,
        }
    }
    #[inline(always)]
    fn a(self, s: usize) -> u32 {
        self.base + s as u32 * self.split.a_bytes()
    }
    #[inline(always)]
    fn b(self, s: usize) -> u32 {
        let split = self.split;
        self.base + split.stages() as u32 * split.a_bytes() + s as u32 * split.b_bytes()
    }
    #[inline(always)]
    fn barriers(self) -> u32 {
        let split = self.split;
        self.base + split.stages() as u32 * (split.a_bytes() + split.b_bytes())
    }
    #[inline(always)]
    fn full(self, s: usize) -> Mbarrier {
        Mbarrier(self.barriers() + 8 * s as u32)
    }
    #[inline(always)]
    fn empty(self, s: usize) -> Mbarrier {
        Mbarrier(self.barriers() + 8 * (self.split.stages() + s) as u32)
    }
}

/// The accumulators of one consumer thread: 64 rows × BN columns per warpgroup.
type Acc = [f32; BN / 2];

/// Runs the pipeline for the tile at (`row0`, `col0`); in the consumer warpgroups, hands the
/// finished accumulators to `epilogue` (the producer warpgroup returns without calling it):
/// columns `0..BN` of the consumer's part, and for `Split::WideRows` columns `BN..2·BN` (two
/// separate arrays, which LLVM keeps in registers where one 128-value array went to the
/// stack).
#[inline(always)]
fn mainloop(
    split: Split,
    map_x: In<TensorMap>,
    map_w: In<TensorMap>,
    row0: u32,
    col0: u32,
    k: u32,
    epilogue: impl FnOnce(&Acc, &Acc),
) {
    let tid = thread_idx().x;
    let wg = tid / 128;
    let sm = Smem::new(split);
    let stages = split.stages();
    let (a_bytes, b_bytes) = (split.a_bytes(), split.b_bytes());
    if tid == 0 {
        acquire_tensor_map(map_x);
        acquire_tensor_map(map_w);
        prefetch_tensor_map(map_x);
        prefetch_tensor_map(map_w);
        for s in 0..stages {
            sm.full(s).init(1);
            sm.empty(s).init(2);
        }
        fence_mbarrier_init();
    }
    sync_threads();
    let k_tiles = k.div_ceil(BK as u32) as usize;
    if wg == 0 {
        if tid == 0 {
            for kt in 0..k_tiles {
                let s = kt % stages;
                if kt >= stages {
                    sm.empty(s).wait(((kt / stages) as u32 + 1) & 1);
                }
                let full = sm.full(s);
                full.arrive_expect_tx(a_bytes + b_bytes);
                let kx = (kt * BK) as u32;
                tma_load_2d(sm.a(s), map_x, kx, row0, full);
                // The B tile in boxes of `BN` rows (one, or two for the grouped GEMMs).
                let mut r = 0;
                while r * B_BYTES < b_bytes {
                    let rows = r * BN as u32;
                    tma_load_2d(sm.b(s) + r * B_BYTES, map_w, kx, col0 + rows, full);
                    r += 1;
                }
            }
        }
        return;
    }
    let consumer = wg - 1;
    let wide = split.wide();
    let mut acc: Acc = [0.0; BN / 2];
    let mut acc_hi: Acc = [0.0; BN / 2];
    // The zeros must be in their registers before the first `wgmma.fence` (see
    // `keep_in_registers`); a `mov` after it makes ptxas serialise the batch.
    acc.keep_in_registers();
    if wide {
        acc_hi.keep_in_registers();
    }
    let (row_off, col_off) = split.origin(consumer);
    for kt in 0..k_tiles {
        let s = kt % stages;
        sm.full(s).wait((kt / stages) as u32 & 1);
        let a = WgmmaDesc::k_major_swizzle_128b(sm.a(s) + row_off * 128);
        let b = WgmmaDesc::k_major_swizzle_128b(sm.b(s) + col_off * 128);
        // The upper half's B rows follow the lower half's 128 rows.
        let b_hi = b.advance(BN as u32 * 128);
        wgmma_fence();
        // Each half gets the same four k16 steps in the same order as in a narrow tile, so an
        // element's bits do not depend on the tile width.
        seq!(KK in 0..4 {
            wgmma_m64n128k16_ss(&mut acc, a.advance(32 * KK), b.advance(32 * KK));
            if wide {
                wgmma_m64n128k16_ss(&mut acc_hi, a.advance(32 * KK), b_hi.advance(32 * KK));
            }
        });
        wgmma_commit();
        // Keep this batch in flight; the previous one is done, so its slot can be refilled.
        // (No register fence here: with a batch in flight, any instruction that names the
        // accumulators, even the copies LLVM makes around an empty `asm!`, serialises.)
        wgmma_wait::<1>();
        if kt > 0 {
            sm.empty((kt - 1) % stages)
                .arrive_if(tid.is_multiple_of(128));
        }
    }
    wgmma_wait::<0>();
    acc.keep_in_registers();
    if wide {
        acc_hi.keep_in_registers();
    }
    epilogue(&acc, &acc_hi);
}

/// Where a consumer thread's accumulators of half `half` (0, or 1 for the upper 128 columns of
/// a wide tile) land in the tile: `d[4j + e]` is row `row + 8·(e/2)`, column `8j + col + e%2`.
#[inline(always)]
fn fragment_origin(split: Split, half: u32) -> (u32, u32) {
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

/// The f32 epilogue: `y[r, c] = acc [+ bias[c]] [+ y[r, c]]` for rows `row0 + r < end` and
/// columns `col0 + c < m`.
#[inline(always)]
fn store_f32(
    (split, half): (Split, u32),
    acc: &Acc,
    (y, bias): (Out<f32>, In<f32>),
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
        for (i, mut v) in [(0, v0), (1, v1)] {
            if c + i < m {
                if flags & EPI_BIAS != 0 {
                    v += bias.at((c + i) as usize);
                }
                if flags & EPI_ADD_TO_Y != 0 {
                    v += y.at(at + i as usize);
                }
                y.set(at + i as usize, v);
            }
        }
    });
}

/// The SwiGLU epilogue of a gate|up tile (per consumer and half: 64 gate columns, then the
/// matching 64 up columns): `h[r, out0 + c] = bf16(silu(gate) · up)` for rows `row0 + r < end`
/// and `out0 + c < m`, `out0` the block's first output feature.
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
    seq!(J in 0..8 {
        seq!(E in 0..4 {
            let r = row + 8 * (E / 2);
            let c = col + 8 * J + E % 2;
            let (g, u) = (acc[4 * J + E], acc[4 * (J + 8) + E]);
            if r < end && c < m {
                h.set((r * m + c) as usize, f32_to_bf16(silu(g) * u));
            }
        });
    });
}

/// The dense f32 GEMM, narrow (`BN` columns per block) or wide (`WIDE_BN`): the same
/// arithmetic for every element, so the host may pick either per call.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dense_f32<const WIDE: bool>(
    map_x: In<TensorMap>,
    map_w: In<TensorMap>,
    bias: In<f32>,
    y: Out<f32>,
    n_rows: u32,
    m: u32,
    k: u32,
    flags: u32,
) {
    let (split, cols) = if WIDE {
        (Split::WideRows, WIDE_BN)
    } else {
        (Split::Rows, BN)
    };
    let (row0, col0) = (block_idx().y * BM as u32, block_idx().x * cols as u32);
    mainloop(split, map_x, map_w, row0, col0, k, |acc, acc_hi| {
        let out = (y, bias);
        store_f32((split, 0), acc, out, (row0, n_rows), (col0, m), flags);
        if WIDE {
            store_f32((split, 1), acc_hi, out, (row0, n_rows), (col0, m), flags);
        }
    });
}

/// The dense SwiGLU GEMM, narrow or wide (as [`dense_f32`]).
#[inline(always)]
fn dense_swiglu<const WIDE: bool>(
    map_x: In<TensorMap>,
    map_w: In<TensorMap>,
    h: Out<u16>,
    n_rows: u32,
    m: u32,
    k: u32,
) {
    let (split, cols) = if WIDE {
        (Split::WideRows, WIDE_BN)
    } else {
        (Split::Rows, BN)
    };
    let (row0, col0) = (block_idx().y * BM as u32, block_idx().x * cols as u32);
    // Each 128 tile columns make 64 outputs (`store_swiglu` maps a half's columns).
    let out0 = block_idx().x * (cols / 2) as u32;
    mainloop(split, map_x, map_w, row0, col0, k, |acc, acc_hi| {
        store_swiglu((split, 0), acc, h, (row0, n_rows), out0, m);
        if WIDE {
            store_swiglu((split, 1), acc_hi, h, (row0, n_rows), out0, m);
        }
    });
}

kernel! {
    /// `y = x · wᵀ [+ bias] [+ y]` (flags `EPI_BIAS`, `EPI_ADD_TO_Y`), f32 out. `map_x`: bf16
    /// `[n_rows][k]`, box 64 × `BM`; `map_w`: bf16 `[m][k]`, box 64 × `BN`; both 128B-swizzled.
    /// Grid: (⌈m / BN⌉, ⌈n_rows / BM⌉); `THREADS` threads; `SHARED_BYTES` dynamic shared memory.
    pub fn gemm_wgmma_f32(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<f32>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_f32::<false>(map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    /// As `gemm_wgmma_f32` with `WIDE_BN` columns per block: grid (⌈m / WIDE_BN⌉,
    /// ⌈n_rows / BM⌉), `WIDE_SHARED_BYTES`. Every element gets the same bits as there.
    pub fn gemm_wgmma_f32_wide(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<f32>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_f32::<true>(map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    /// `h = bf16(silu(x · w_gateᵀ) ⊙ (x · w_upᵀ))` with gate and up interleaved in `map_w` in
    /// blocks of 64 rows (rows `128i..128i+64` gate features `64i..`, the next 64 rows up), so a
    /// 128-column tile holds 64 gate and the matching 64 up columns in the same thread.
    /// `m` is the number of output features (`map_w` has `2·⌈m/64⌉·64` rows).
    /// Grid: (⌈m / 64⌉, ⌈n_rows / BM⌉).
    pub fn gemm_wgmma_swiglu(map_x: In<TensorMap>, map_w: In<TensorMap>, h: Out<u16>, n_rows: u32, m: u32, k: u32) {
        dense_swiglu::<false>(map_x, map_w, h, n_rows, m, k);
    }
}

kernel! {
    /// As `gemm_wgmma_swiglu` with `WIDE_BN` columns per block: grid (⌈m / 128⌉,
    /// ⌈n_rows / BM⌉), `WIDE_SHARED_BYTES`.
    pub fn gemm_wgmma_swiglu_wide(map_x: In<TensorMap>, map_w: In<TensorMap>, h: Out<u16>, n_rows: u32, m: u32, k: u32) {
        dense_swiglu::<true>(map_x, map_w, h, n_rows, m, k);
    }
}

/// Tile `blockIdx.y` of a grouped GEMM: (expert, first row, end of the expert's rows), from the
/// table `moe::moe_group_scan` builds (`tiles[2t] = expert`, `tiles[2t + 1] = first row`,
/// `GROUPED_BM` rows per tile); `None` past `num_tiles[0]` (the grid is sized for the worst
/// case).
#[inline(always)]
fn grouped_tile(tiles: In<u32>, num_tiles: In<u32>, offsets: In<u32>) -> Option<(u32, u32, u32)> {
    let t = block_idx().y as usize;
    if t >= num_tiles.at(0) as usize {
        return None;
    }
    let expert = tiles.at(2 * t);
    Some((expert, tiles.at(2 * t + 1), offsets.at(expert as usize + 1)))
}

kernel! {
    /// MoE gate|up for every expert in one launch, SwiGLU fused: expert-grouped rows of `map_x`
    /// (bf16 `[pairs][k]`, the gathered activations), expert `e`'s interleaved gate|up rows
    /// `e·2·⌈m/64⌉·64..` of `map_w`. `h`: bf16 `[pairs][m]`. Grid: (⌈m / 128⌉, max tiles);
    /// `GROUPED_SHARED_BYTES`.
    pub fn moe_gemm_wgmma_swiglu(map_x: In<TensorMap>, map_w: In<TensorMap>, h: Out<u16>, tiles: In<u32>, num_tiles: In<u32>, offsets: In<u32>, m: u32, k: u32) {
        let Some((e, row0, end)) = grouped_tile(tiles, num_tiles, offsets) else {
            return;
        };
        let rows_per_expert = 2 * m.div_ceil(64) * 64;
        let col0 = e * rows_per_expert + block_idx().x * GROUPED_BN as u32;
        mainloop(Split::WideRows, map_x, map_w, row0, col0, k, |acc, acc_hi| {
            let out0 = block_idx().x * (GROUPED_BN / 2) as u32;
            store_swiglu((Split::WideRows, 0), acc, h, (row0, end), out0, m);
            store_swiglu((Split::WideRows, 1), acc_hi, h, (row0, end), out0, m);
        });
    }
}

kernel! {
    /// MoE down projection for every expert in one launch: expert-grouped rows of `map_x`
    /// (bf16 `[pairs][k]`), expert `e`'s weights rows `e·m..` of `map_w` (`[experts·m][k]`).
    /// `y`: f32 `[pairs][m]`. Grid: (⌈m / GROUPED_BN⌉, max tiles); `GROUPED_SHARED_BYTES`.
    pub fn moe_gemm_wgmma_f32(map_x: In<TensorMap>, map_w: In<TensorMap>, y: Out<f32>, tiles: In<u32>, num_tiles: In<u32>, offsets: In<u32>, m: u32, k: u32) {
        let Some((e, row0, end)) = grouped_tile(tiles, num_tiles, offsets) else {
            return;
        };
        let col0 = block_idx().x * GROUPED_BN as u32;
        mainloop(Split::WideRows, map_x, map_w, row0, e * m + col0, k, |acc, acc_hi| {
            let out = (y, y.as_in());
            store_f32((Split::WideRows, 0), acc, out, (row0, end), (col0, m), 0);
            store_f32((Split::WideRows, 1), acc_hi, out, (row0, end), (col0, m), 0);
        });
    }
}
