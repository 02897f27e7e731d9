//! Hopper GEMM: `y[r, c] = Σ_k x[r, k] · w[c, k]` with bf16 `x` and `w` (GGUF `[out][in]`
//! order), f32 accumulation on tensor cores (`wgmma`), tiles brought in by TMA.
//!
//! Block: 3 warpgroups (384 threads). Warpgroup 0 is the producer: one thread streams 64-wide
//! K slices of the x tile (`BM` rows) and the w tile (`BN` rows) into a ring of `STAGES`
//! shared-memory slots, each guarded by a "full" and an "empty" mbarrier. Warpgroups 1 and 2
//! are consumers: each owns 64 rows of the tile and runs four k16 steps of `m64n128k16`
//! (`m64n256k16` for wide tiles, `m64n64k16` for half-width ones) per slot, keeping one batch
//! in flight, then releases the slot. The epilogue stores through shared memory (epilogue.rs).
//!
//! Registers: 384 threads get at most 168 each at launch; the producer warpgroup lowers its
//! budget to 40 and the consumers raise theirs to 232 (`setmaxnreg`, honoured because each
//! entry is declared for exactly `THREADS` threads), so the wide tiles' 128 accumulators and
//! the epilogue's addressing fit without spills.
//!
//! Launches are persistent: a block per multiprocessor walks the tiles (`persistent`), so the
//! producer fills the ring with the next tile's slices while the consumers run the epilogue of
//! the last one, and the ring is set up once per block instead of once per tile.
//!
//! The wide dense kernels also come paired (`*_wide_pair`): clusters of two blocks on two row
//! tiles of one column block, each loading half of the shared B tile into both by multicast
//! TMA (`gemm_wgmma/pairs.rs`). The host pairs launches of many tiles (`PAIRED_MIN_TILES`;
//! `KILN_GEMM_PAIRS` overrides).
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
use crate::device::tensor_core::{
    Accumulators, WgmmaDesc, swizzle_aligned_shared_base, wgmma_commit, wgmma_fence,
    wgmma_m64n64k16_ss, wgmma_m64n128k16_ss, wgmma_m64n256k16_ss_pair, wgmma_wait,
};
use crate::device::*;
use seq_macro::seq;

// `src/*.rs` are declared with `#[path]` (gpu-kernels/build.rs), so a submodule names its file.
#[path = "gemm_wgmma/epilogue.rs"]
mod epilogue;
use epilogue::{ColumnStore, OutElement, STAGING_BYTES, SwigluStore, TileStore};
#[path = "gemm_wgmma/qkv_rope.rs"]
mod qkv_rope;
use qkv_rope::QkvRopeStore;
pub use qkv_rope::{EPI_QK_NORM, QKV_HEAD_DIM};
#[path = "gemm_wgmma/pairs.rs"]
mod pairs;
use pairs::{Dense, Pair, Share};
pub use pairs::{RASTER_ROWS, raster};
#[path = "gemm_wgmma/segments.rs"]
mod segments;
pub use segments::{gemm_wgmma_f32_segments, gemm_wgmma_f32_segments_half};

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
/// Registers per thread of the producer and of each consumer warpgroup (module doc).
const PRODUCER_REGISTERS: u32 = 40;
const CONSUMER_REGISTERS: u32 = 232;
const _: () = assert!(registers_fit(
    THREADS,
    &[PRODUCER_REGISTERS, CONSUMER_REGISTERS, CONSUMER_REGISTERS]
));
const A_BYTES: u32 = (BM * BK * 2) as u32;
const B_BYTES: u32 = (BN * BK * 2) as u32;
/// Dynamic shared memory a launch must provide (tiles, barriers, and slack to align to 1024).
pub const SHARED_BYTES: u32 =
    STAGES as u32 * (A_BYTES + B_BYTES) + STAGING_BYTES + 2 * 8 * STAGES as u32 + 1024;

/// Output columns per block of the wide dense kernels (`*_wide`): each consumer keeps two
/// 128-column accumulators, so a block reads its A tile once per 256 columns instead of 128.
pub const WIDE_BN: usize = 2 * BN;
const WIDE_STAGES: usize = 4;
/// Dynamic shared memory of the wide dense kernels.
pub const WIDE_SHARED_BYTES: u32 = WIDE_STAGES as u32 * (A_BYTES + 2 * B_BYTES)
    + STAGING_BYTES
    + 2 * 8 * WIDE_STAGES as u32
    + 1024;

/// Output columns per block of the half-width kernel (`gemm_wgmma_f32_segments_half`); its B
/// map must be read in boxes of `HALF_BN` rows.
pub const HALF_BN: usize = BN / 2;

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
    /// Half width: 128 rows × `HALF_BN` columns, consumer `c` takes rows `64c..`
    /// (`m64n64k16`): half a narrow tile's work per block, so a small GEMM (the MoE router's
    /// at few tokens) spreads over twice the multiprocessors.
    HalfWidth,
}

impl Split {
    const fn stages(self) -> usize {
        match self {
            Split::Rows | Split::HalfWidth => STAGES,
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
            Split::HalfWidth => B_BYTES / 2,
        }
    }
    /// B rows (tile columns) per tile.
    const fn cols(self) -> u32 {
        match self {
            Split::Rows => BN as u32,
            Split::WideRows => WIDE_BN as u32,
            Split::HalfWidth => HALF_BN as u32,
        }
    }
    /// Dynamic shared memory of a launch.
    const fn shared_bytes(self) -> u32 {
        match self {
            Split::Rows | Split::HalfWidth => SHARED_BYTES,
            Split::WideRows => WIDE_SHARED_BYTES,
        }
    }
    /// Tile columns per accumulator array (`Acc`): `BN` (a wide tile has two arrays), or
    /// `HALF_BN` for half-width tiles, whose accumulators fill the lower half of the array.
    const fn half_cols(self) -> u32 {
        let cols = self.cols();
        if cols < BN as u32 { cols } else { BN as u32 }
    }
    const fn half_width(self) -> bool {
        matches!(self, Split::HalfWidth)
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
    /// The epilogue's staging region (`epilogue::STAGING_BYTES`), after the slots.
    #[inline(always)]
    fn staging(self) -> u32 {
        let split = self.split;
        self.base + split.stages() as u32 * (split.a_bytes() + split.b_bytes())
    }
    #[inline(always)]
    fn barriers(self) -> u32 {
        self.staging() + STAGING_BYTES
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

/// One output tile of a persistent launch: rows `row0..end` of x (rows past `end` are computed
/// but never stored), B rows from `w_row0` of `map_w`, `col`, the tile's column block
/// (which output columns it makes is the epilogue's business), and its K slices
/// `slices.0..slices.0 + slices.1` (`BK` wide; all of K but in a K-segmented launch).
#[derive(Clone, Copy)]
struct Tile {
    row0: u32,
    end: u32,
    w_row0: u32,
    col: u32,
    slices: (u32, u32),
}

/// Runs every tile of a persistent launch: block `b` takes tiles `b`, `b + grid`, … of
/// `tile_at` (the first `None` ends the walk), so the producer streams the next tile's K slices
/// while the consumers store the last one. Consumer warpgroups hand each finished tile's
/// accumulators to `epilogue` (a [`TileStore`]): columns `0..BN` of the consumer's part, and for
/// `Split::WideRows` columns `BN..2·BN` (two separate arrays, which LLVM keeps in registers
/// where one 128-value array went to the stack). The ring's slot and phase run on across tiles
/// (`it` counts K slices since the launch), identically in producer and consumers.
///
/// With `share` other than `Share::None` the launch runs as clusters of two (see
/// [`pairs::Share`]): `tile_at` must then give tiles `2p` and `2p + 1` the same B rows and K
/// slices, and both or neither (a tile whose rows are all past `end` is stored by nobody, but
/// its block still loads its half of the shared operand for the peer).
#[inline(always)]
fn persistent(
    (split, share): (Split, Share),
    (map_x, map_w): (In<TensorMap>, In<TensorMap>),
    tile_at: impl Fn(u32) -> Option<Tile>,
    epilogue: impl TileStore,
) {
    let tid = thread_idx().x;
    let wg = tid / 128;
    let sm = Smem::new(split);
    let stages = split.stages() as u32;
    let (a_bytes, b_bytes) = (split.a_bytes(), split.b_bytes());
    let pair = Pair::new(share);
    if tid == 0 {
        acquire_tensor_map(map_x);
        acquire_tensor_map(map_w);
        prefetch_tensor_map(map_x);
        prefetch_tensor_map(map_w);
        for s in 0..stages as usize {
            sm.full(s).init(1);
            sm.empty(s).init(pair.empty_arrivals());
        }
        fence_mbarrier_init();
    }
    pair.sync_after_init();
    let (first, stride) = (block_idx().x, grid_dim().x);
    if wg == 0 {
        // The producer needs few registers; the consumers get them (see the module doc).
        // Half-width tiles' consumers fit the launch's budget: ptxas then sizes the kernel
        // below it, and would ignore `setmaxnreg` (C7508).
        if !split.half_width() {
            lower_registers::<PRODUCER_REGISTERS>();
        }
        if tid == 0 {
            let mut it = 0u32;
            let mut t = first;
            while let Some(tile) = tile_at(t) {
                let (k0, k_tiles) = tile.slices;
                for kt in k0..k0 + k_tiles {
                    let s = (it % stages) as usize;
                    if it >= stages {
                        sm.empty(s).wait((it / stages + 1) & 1);
                    }
                    let full = sm.full(s);
                    // Shared or not, every byte of both tiles lands in this block's slot.
                    full.arrive_expect_tx(a_bytes + b_bytes);
                    let kx = kt * BK as u32;
                    tma_load_2d(sm.a(s), map_x, kx, tile.row0, full);
                    // The B tile in boxes of `BN` rows (one, or two for wide tiles).
                    let mut r = 0;
                    while r * B_BYTES < b_bytes {
                        let (dst, y) = (sm.b(s) + r * B_BYTES, tile.w_row0 + r * BN as u32);
                        pair.load_b(dst, map_w, (kx, y), r, full);
                        r += 1;
                    }
                    it += 1;
                }
                t += stride;
            }
        }
        pair.sync_before_exit();
        return;
    }
    if !split.half_width() {
        raise_registers::<CONSUMER_REGISTERS>();
    }
    let consumer = wg - 1;
    let (wide, half_width) = (split.wide(), split.half_width());
    let (row_off, col_off) = split.origin(consumer);
    let release = tid.is_multiple_of(128);
    let mut it = 0u32;
    let mut t = first;
    while let Some(tile) = tile_at(t) {
        let mut acc: Acc = [0.0; BN / 2];
        let mut acc_hi: Acc = [0.0; BN / 2];
        // The zeros must be in their registers before the first `wgmma.fence` (see
        // `keep_in_registers`); a `mov` after it makes ptxas serialise the batch.
        acc.keep_in_registers();
        if wide {
            acc_hi.keep_in_registers();
        }
        for kt in 0..tile.slices.1 {
            let s = (it % stages) as usize;
            sm.full(s).wait((it / stages) & 1);
            let a = WgmmaDesc::k_major_swizzle_128b(sm.a(s) + row_off * 128);
            let b = WgmmaDesc::k_major_swizzle_128b(sm.b(s) + col_off * 128);
            wgmma_fence();
            // Every element gets the same four k16 steps in the same order in a narrow tile
            // (m64n128k16) and a wide one (m64n256k16, one instruction, so A is read once per
            // step): an element's bits do not depend on the tile width (a GPU test checks it).
            seq!(KK in 0..4 {
                if wide {
                    let (a, b) = (a.advance(32 * KK), b.advance(32 * KK));
                    wgmma_m64n256k16_ss_pair(&mut acc, &mut acc_hi, a, b);
                } else if half_width {
                    // Always `Some` (32 of 64): the check folds away.
                    if let Some(lower) = acc.first_chunk_mut::<32>() {
                        wgmma_m64n64k16_ss(lower, a.advance(32 * KK), b.advance(32 * KK));
                    }
                } else {
                    wgmma_m64n128k16_ss(&mut acc, a.advance(32 * KK), b.advance(32 * KK));
                }
            });
            wgmma_commit();
            // Keep this batch in flight; the previous one is done, so its slot can be
            // refilled. (No register fence here: with a batch in flight, any instruction that
            // names the accumulators, even the copies LLVM makes around an empty `asm!`,
            // serialises.)
            wgmma_wait::<1>();
            if kt > 0 {
                pair.free(sm.empty(((it - 1) % stages) as usize), release);
            }
            it += 1;
        }
        wgmma_wait::<0>();
        // The tile's last slot, so the producer can fill it with the next tile's first slices.
        pair.free(sm.empty(((it - 1) % stages) as usize), release);
        acc.keep_in_registers();
        if wide {
            acc_hi.keep_in_registers();
        }
        epilogue.store(tile, &acc, &acc_hi, sm.staging());
        t += stride;
    }
    pair.sync_before_exit();
}

/// The dense GEMM tiled as `tiling` says (narrow, wide, or wide in cluster pairs): the same
/// arithmetic for every element, so the host may pick any per call. `n_cols` B rows; `store`
/// makes the epilogue for the split.
#[inline(always)]
fn dense<S: TileStore>(
    tiling: Dense,
    (map_x, map_w): (In<TensorMap>, In<TensorMap>),
    (n_rows, n_cols, k): (u32, u32, u32),
    store: impl FnOnce(Split) -> S,
) {
    let pipe = tiling.pipe();
    let k_slices = k.div_ceil(BK as u32);
    let tiles = |t| tiling.tile(t, (n_rows, n_cols), k_slices);
    persistent(pipe, (map_x, map_w), tiles, store(pipe.0));
}

/// The dense GEMM with the column epilogue, f32 or bf16 out (`O`; as [`dense`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dense_columns<O: OutElement>(
    tiling: Dense,
    map_x: In<TensorMap>,
    map_w: In<TensorMap>,
    bias: In<f32>,
    y: O,
    n_rows: u32,
    m: u32,
    k: u32,
    flags: u32,
) {
    dense(tiling, (map_x, map_w), (n_rows, m, k), |split| {
        ColumnStore {
            split,
            y,
            bias,
            m,
            flags,
        }
    });
}

/// The dense SwiGLU GEMM (as [`dense`]).
#[inline(always)]
fn dense_swiglu(
    tiling: Dense,
    map_x: In<TensorMap>,
    map_w: In<TensorMap>,
    h: Out<u16>,
    n_rows: u32,
    m: u32,
    k: u32,
) {
    let w_rows = 2 * m.div_ceil(64) * 64;
    dense(tiling, (map_x, map_w), (n_rows, w_rows, k), |split| {
        SwigluStore { split, h, m }
    });
}

kernel! {
    threads = THREADS;
    /// `y = x · wᵀ [+ bias] [+ y]` (flags `EPI_BIAS`, `EPI_ADD_TO_Y`), f32 out. `map_x`: bf16
    /// `[n_rows][k]`, box 64 × `BM`; `map_w`: bf16 `[m][k]`, box 64 × `BN`; both 128B-swizzled.
    /// Persistent: any 1-D grid (one block per multiprocessor, at most one per tile);
    /// `THREADS` threads; `SHARED_BYTES` dynamic shared memory.
    pub fn gemm_wgmma_f32(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<f32>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_columns(Dense::Narrow, map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    threads = THREADS;
    /// As `gemm_wgmma_f32` with `WIDE_BN` columns per tile and `WIDE_SHARED_BYTES`. Every
    /// element gets the same bits as there.
    pub fn gemm_wgmma_f32_wide(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<f32>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_columns(Dense::Wide, map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    threads = THREADS;
    cluster = 2;
    /// As `gemm_wgmma_f32_wide`, run as clusters of two blocks that share each B tile (two row
    /// tiles of one column block; `gemm_wgmma/pairs.rs`): the grid is whole clusters (an even
    /// number of blocks). Same bits.
    pub fn gemm_wgmma_f32_wide_pair(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<f32>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_columns(Dense::WidePaired, map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    threads = THREADS;
    /// `y = bf16(x · wᵀ [+ bias])` (flag `EPI_BIAS`; each element one rounding of its f32
    /// sum): as `gemm_wgmma_f32` with a bf16 `y` (the Q|K|V projection, read once by
    /// `attention_input`). Persistent, as `gemm_wgmma_f32`.
    pub fn gemm_wgmma_bf16(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<u16>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_columns(Dense::Narrow, map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    threads = THREADS;
    /// As `gemm_wgmma_bf16` with `WIDE_BN` columns per tile and `WIDE_SHARED_BYTES`.
    pub fn gemm_wgmma_bf16_wide(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<u16>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_columns(Dense::Wide, map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    threads = THREADS;
    cluster = 2;
    /// As `gemm_wgmma_bf16_wide` in clusters of two sharing each B tile (as
    /// `gemm_wgmma_f32_wide_pair`). Same bits.
    pub fn gemm_wgmma_bf16_wide_pair(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, y: Out<u16>, n_rows: u32, m: u32, k: u32, flags: u32) {
        dense_columns(Dense::WidePaired, map_x, map_w, bias, y, n_rows, m, k, flags);
    }
}

kernel! {
    threads = THREADS;
    /// `h = bf16(silu(x · w_gateᵀ) ⊙ (x · w_upᵀ))` with gate and up interleaved in `map_w` in
    /// blocks of 64 rows (rows `128i..128i+64` gate features `64i..`, the next 64 rows up), so a
    /// 128-column tile holds 64 gate and the matching 64 up columns in the same thread.
    /// `m` is the number of output features (`map_w` has `2·⌈m/64⌉·64` rows).
    /// Persistent, as `gemm_wgmma_f32`.
    pub fn gemm_wgmma_swiglu(map_x: In<TensorMap>, map_w: In<TensorMap>, h: Out<u16>, n_rows: u32, m: u32, k: u32) {
        dense_swiglu(Dense::Narrow, map_x, map_w, h, n_rows, m, k);
    }
}

kernel! {
    threads = THREADS;
    /// As `gemm_wgmma_swiglu` with `WIDE_BN` columns per tile and `WIDE_SHARED_BYTES`.
    pub fn gemm_wgmma_swiglu_wide(map_x: In<TensorMap>, map_w: In<TensorMap>, h: Out<u16>, n_rows: u32, m: u32, k: u32) {
        dense_swiglu(Dense::Wide, map_x, map_w, h, n_rows, m, k);
    }
}

kernel! {
    threads = THREADS;
    cluster = 2;
    /// As `gemm_wgmma_swiglu_wide` in clusters of two sharing each B tile (as
    /// `gemm_wgmma_f32_wide_pair`). Same bits.
    pub fn gemm_wgmma_swiglu_wide_pair(map_x: In<TensorMap>, map_w: In<TensorMap>, h: Out<u16>, n_rows: u32, m: u32, k: u32) {
        dense_swiglu(Dense::WidePaired, map_x, map_w, h, n_rows, m, k);
    }
}

kernel! {
    threads = THREADS;
    /// The Q|K|V projection with `attention_input` fused into its epilogue (head_dim
    /// `QKV_HEAD_DIM`; see `gemm_wgmma/qkv_rope.rs`): `map_x` the normed rows (bf16 `[n_rows][k]`,
    /// row `t` at position `start_pos + t`), `map_w` the stacked Q|K|V weights (`[(n_head +
    /// 2·n_kv)·128][k]`), `bias` (flag `EPI_BIAS`), `q_norm`/`k_norm` `[128]` (flag
    /// `EPI_QK_NORM`), `inv_freq[64]`. Writes `q` `[n_rows][n_head·128]`, `k_cache[pos][n_kv·128]`
    /// and `v_cache_t[n_kv·128][capacity]` for `pos = start_pos + t`. Wide tiles; persistent, as
    /// `gemm_wgmma_f32`; `WIDE_SHARED_BYTES`.
    pub fn gemm_wgmma_qkv_rope(map_x: In<TensorMap>, map_w: In<TensorMap>, bias: In<f32>, inv_freq: In<f32>, q_norm: In<f32>, k_norm: In<f32>, q: Out<u16>, k_cache: Out<u16>, v_cache_t: Out<u16>, n_rows: u32, k: u32, start_pos: u32, n_head: u32, n_kv: u32, capacity: u32, flags: u32, eps: f32) {
        let m = (n_head + 2 * n_kv) * QKV_HEAD_DIM as u32;
        dense(Dense::Wide, (map_x, map_w), (n_rows, m, k), |split| QkvRopeStore {
            split,
            bias,
            inv_freq,
            q_norm,
            k_norm,
            q,
            k_cache,
            v_cache_t,
            start_pos,
            n_head,
            n_kv,
            capacity,
            flags,
            eps,
        });
    }
}

/// Tile `t` of a grouped GEMM over `col_blocks` column blocks: row tile `t / col_blocks` of
/// the table `moe::moe_group_scan` builds (`tiles[2i] = expert`, `tiles[2i + 1] = first row`,
/// `GROUPED_BM` rows per tile, `num_tiles[0]` of them), ending at its expert's last row; and
/// the expert. `w_rows`: B rows per expert; `k`: the reduction length.
#[inline(always)]
fn grouped_tile(
    t: u32,
    (tiles, num_tiles, offsets): (In<u32>, In<u32>, In<u32>),
    (col_blocks, w_rows, k): (u32, u32, u32),
) -> Option<Tile> {
    let (i, col) = ((t / col_blocks) as usize, t % col_blocks);
    if i >= num_tiles.at(0) as usize {
        return None;
    }
    let expert = tiles.at(2 * i);
    Some(Tile {
        row0: tiles.at(2 * i + 1),
        end: offsets.at(expert as usize + 1),
        w_row0: expert * w_rows + col * GROUPED_BN as u32,
        col,
        slices: (0, k.div_ceil(BK as u32)),
    })
}

/// The grouped GEMMs run unpaired: clusters of two sharing the A tile (two column blocks of
/// one row tile) measured slower on the H200 (NOTES, session 5).
const GROUPED_PIPE: (Split, Share) = (Split::WideRows, Share::None);

kernel! {
    threads = THREADS;
    /// MoE gate|up for every expert in one launch, SwiGLU fused: expert-grouped rows of `map_x`
    /// (bf16 `[pairs][k]`, the gathered activations), expert `e`'s interleaved gate|up rows
    /// `e·2·⌈m/64⌉·64..` of `map_w`. `h`: bf16 `[pairs][m]`. Persistent: any 1-D grid (one
    /// block per multiprocessor); `GROUPED_SHARED_BYTES`.
    pub fn moe_gemm_wgmma_swiglu(map_x: In<TensorMap>, map_w: In<TensorMap>, h: Out<u16>, tiles: In<u32>, num_tiles: In<u32>, offsets: In<u32>, m: u32, k: u32) {
        let w_rows = 2 * m.div_ceil(64) * 64;
        let table = (tiles, num_tiles, offsets);
        let col_blocks = w_rows.div_ceil(GROUPED_BN as u32);
        let tile_at = |t| grouped_tile(t, table, (col_blocks, w_rows, k));
        let split = Split::WideRows;
        persistent(GROUPED_PIPE, (map_x, map_w), tile_at, SwigluStore { split, h, m });
    }
}

kernel! {
    threads = THREADS;
    /// MoE down projection for every expert in one launch: expert-grouped rows of `map_x`
    /// (bf16 `[pairs][k]`), expert `e`'s weights rows `e·m..` of `map_w` (`[experts·m][k]`).
    /// `y`: bf16 `[pairs][m]` (each element one rounding of its f32 accumulator: the combine
    /// reads these rows `top_k` times per token, so they are half the bytes of f32 rows, and
    /// transformers keeps expert outputs in bf16 too). Persistent: any 1-D grid;
    /// `GROUPED_SHARED_BYTES`.
    pub fn moe_gemm_wgmma_bf16(map_x: In<TensorMap>, map_w: In<TensorMap>, y: Out<u16>, tiles: In<u32>, num_tiles: In<u32>, offsets: In<u32>, m: u32, k: u32) {
        let table = (tiles, num_tiles, offsets);
        let tile_at = |t| grouped_tile(t, table, (m.div_ceil(GROUPED_BN as u32), m, k));
        // No bias (flags 0): `bias` is never read.
        let (split, bias, flags) = (Split::WideRows, y.as_in().cast::<f32>(), 0);
        persistent(GROUPED_PIPE, (map_x, map_w), tile_at, ColumnStore { split, y, bias, m, flags });
    }
}
