//! Probe kernels: each exercises one device-API piece in isolation (TMA, mbarrier, `wgmma`,
//! `cp.async`), so
//! a test can check the piece against the PTX ISA's layouts on the GPU and on the emulator
//! before any real kernel depends on it. Not used by the pipeline. The `cluster = 2` probes at
//! the end are also the only code that makes ptxas see the cluster instructions
//! (`device::cluster`, multicast TMA, remote arrivals) before a GEMM uses them.

// `seq!` unrolls loops by substituting each literal index into arithmetic written for all of
// them (`8 * R`, `4 * J + 0`, `KK / 4` with KK = 0, …); the lints below would flag the cases
// that happen to be identities.
#![allow(clippy::identity_op, clippy::erasing_op, clippy::eq_op)]

use crate::device::async_copy::{
    Mbarrier, TensorMap, acquire_tensor_map, bulk_load, cp_async_16, cp_async_commit,
    cp_async_wait, fence_mbarrier_init, tma_load_2d, tma_load_2d_multicast,
};
use crate::device::cluster::{cluster_ctarank, cluster_size, cluster_sync};
use crate::device::tensor_core::{
    Accumulators, WgmmaDesc, swizzle_aligned_shared_base, wgmma_commit, wgmma_fence,
    wgmma_m64n128k16_ss, wgmma_wait,
};
use crate::device::*;
use seq_macro::seq;

/// Bytes of dynamic shared memory the probes need.
pub const PROBE_SHARED_BYTES: u32 = 2 * 16384 + 64 + 1024;

/// The mbarrier at `at`, initialised by thread 0 for `arrivals` arrivals and visible to the
/// whole block (and to TMA) when this returns.
#[inline(always)]
fn block_barrier(at: u32, arrivals: u32) -> Mbarrier {
    let bar = Mbarrier(at);
    if thread_idx().x == 0 {
        bar.init(arrivals);
        fence_mbarrier_init();
    }
    sync_threads();
    bar
}

/// Copies `bytes` of shared memory starting at the shared address `base`, as laid out there,
/// to `out` as words (the block's threads in a strided loop).
#[inline(always)]
fn copy_shared_out(base: u32, bytes: u32, out: Out<u32>) {
    let first = ((base - dynamic_shared_address()) / 4) as usize;
    let words = dynamic_shared::<u32>(first + bytes as usize / 4);
    let mut i = thread_idx().x as usize;
    while i < bytes as usize / 4 {
        out.set(i, words.load(first + i));
        i += block_dim().x as usize;
    }
}

kernel! {
    /// Loads the box at (`x`, `y`) of `map` (`box_bytes` bytes) into shared memory by TMA and
    /// copies the shared bytes, as laid out there (swizzle included), to `out` as words.
    /// One block of any whole number of warps.
    pub fn probe_tma_load(map: In<TensorMap>, out: Out<u32>, x: u32, y: u32, box_bytes: u32) {
        let base = swizzle_aligned_shared_base();
        let bar = block_barrier(base + 32768, 1);
        let tid = thread_idx().x;
        if tid == 0 {
            acquire_tensor_map(map);
            bar.arrive_expect_tx(box_bytes);
            tma_load_2d(base, map, x, y, bar);
        }
        bar.wait(0);
        copy_shared_out(base, box_bytes, out);
    }
}

kernel! {
    /// Builds a tile of `n_rows` (≤ 128, ≤ the block's threads) rows from one-row boxes of
    /// `map` (box 64 × 1, 128-byte swizzle): thread `r` loads row `rows[r]` at column 0 into
    /// the tile's line `r` (shared `base + 128·r`), as the grouped gate|up gathers its A rows;
    /// then copies the tile's shared bytes to `out` as words. One block of any whole number of
    /// warps. (On the H200 a grouped gate|up that gathered its rows this way gave the bits of
    /// the separate-gather path, but ran 2.5× slower: one TMA per 128-byte row; NOTES.md.)
    pub fn probe_tma_rows(map: In<TensorMap>, rows: In<u32>, out: Out<u32>, n_rows: u32) {
        let base = swizzle_aligned_shared_base();
        let bar = block_barrier(base + 32768, 1);
        let tid = thread_idx().x;
        if tid == 0 {
            acquire_tensor_map(map);
            bar.arrive_expect_tx(128 * n_rows);
        }
        sync_threads();
        if tid < n_rows {
            tma_load_2d(base + 128 * tid, map, 0, rows.at(tid as usize), bar);
        }
        bar.wait(0);
        copy_shared_out(base, 128 * n_rows, out);
    }
}

kernel! {
    /// Copies the first `bytes` (a multiple of 16, at most 32768) of `src` into shared memory in
    /// 16-byte `cp.async` chunks, chunk `c` by thread `c % threads` in the commit group of its
    /// `c / threads`-th round, the chunks from byte `valid` on as zero fills (nothing read);
    /// waits for them and copies the shared bytes to `out` as words. One block of any whole
    /// number of warps.
    pub fn probe_cp_async(src: In<u32>, out: Out<u32>, bytes: u32, valid: u32) {
        let base = swizzle_aligned_shared_base();
        let mut c = thread_idx().x;
        while c < bytes / 16 {
            cp_async_16(base + 16 * c, src, 4 * c as usize, 16 * c < valid);
            cp_async_commit();
            c += block_dim().x;
        }
        cp_async_wait::<0>();
        sync_threads();
        copy_shared_out(base, bytes, out);
    }
}

kernel! {
    /// One warpgroup (128 threads): A (64 × 64 bf16, `map_a` box 64 × 64) and B (128 × 64,
    /// `map_b` box 64 × 128) by TMA, then four `m64n128k16` steps over K = 64; writes each
    /// thread's 64 accumulators to `out[thread][64]` in fragment order.
    pub fn probe_wgmma(map_a: In<TensorMap>, map_b: In<TensorMap>, out: Out<f32>) {
        let base = swizzle_aligned_shared_base();
        let (a_tile, b_tile) = (base, base + 8192);
        let bar = block_barrier(base + 32768, 1);
        let tid = thread_idx().x;
        if tid == 0 {
            acquire_tensor_map(map_a);
            acquire_tensor_map(map_b);
            bar.arrive_expect_tx(8192 + 16384);
            tma_load_2d(a_tile, map_a, 0, 0, bar);
            tma_load_2d(b_tile, map_b, 0, 0, bar);
        }
        bar.wait(0);
        let mut acc = [0.0f32; 64];
        acc.keep_in_registers();
        let a = WgmmaDesc::k_major_swizzle_128b(a_tile);
        let b = WgmmaDesc::k_major_swizzle_128b(b_tile);
        wgmma_fence();
        seq!(K in 0..4 {
            wgmma_m64n128k16_ss(&mut acc, a.advance(32 * K), b.advance(32 * K));
        });
        wgmma_commit();
        wgmma_wait::<0>();
        acc.keep_in_registers();
        let t = tid as usize;
        seq!(I in 0..64 {
            out.set(t * 64 + I, acc[I]);
        });
    }
}

kernel! {
    /// Every thread arrives once on a barrier that expects `block_dim().x` arrivals; all wait
    /// for phase 0, then thread 0 writes 1 to `out[0]`. Checks `mbarrier` alone.
    pub fn probe_mbarrier(out: Out<u32>) {
        let bar = block_barrier(swizzle_aligned_shared_base(), block_dim().x);
        bar.arrive();
        bar.wait(0);
        if thread_idx().x == 0 {
            out.set(0, 1);
        }
    }
}

kernel! {
    /// Copies `bytes` from `src` into shared memory with one non-tensor bulk copy completing on
    /// an mbarrier, then back out to `out` as words. Checks bulk copies + transaction counts.
    pub fn probe_bulk_load(src: In<u32>, out: Out<u32>, bytes: u32) {
        let base = swizzle_aligned_shared_base();
        let bar = block_barrier(base + 32768, 1);
        let tid = thread_idx().x;
        if tid == 0 {
            bar.arrive_expect_tx(bytes);
            bulk_load(base, src, bytes, bar);
        }
        bar.wait(0);
        copy_shared_out(base, bytes, out);
    }
}

kernel! {
    threads = 128; cluster = 2;
    /// Per block, thread 0 writes `out[3·block + 0..3]`: its cluster rank, the cluster size,
    /// and 1 once a barrier of its own that expects one arrival from every block of the
    /// cluster (each block's thread 0 arrives on every block's copy, `arrive_cluster`) has
    /// completed. Checks the cluster registers, `cluster_sync`, `mapa` and remote arrivals.
    pub fn probe_cluster_ids(out: Out<u32>) {
        let bar = Mbarrier(swizzle_aligned_shared_base());
        let tid = thread_idx().x;
        if tid == 0 {
            bar.init(cluster_size());
            fence_mbarrier_init();
        }
        cluster_sync();
        if tid == 0 {
            for r in 0..cluster_size() {
                bar.arrive_cluster(r);
            }
            bar.wait(0);
            let at = 3 * block_idx().x as usize;
            out.set(at, cluster_ctarank());
            out.set(at + 1, cluster_size());
            out.set(at + 2, 1);
        }
        // No block exits while a peer may still arrive on its barrier.
        cluster_sync();
    }
}

kernel! {
    threads = 128; cluster = 2;
    /// Block rank 0 of each cluster loads the box at (`x`, `y`) of `map` (`box_bytes` bytes)
    /// into both blocks' shared memory with one multicast TMA; each block waits on its own
    /// barrier and copies its shared bytes, as laid out there, to `out[block][box_bytes / 4]`.
    pub fn probe_tma_multicast(map: In<TensorMap>, out: Out<u32>, x: u32, y: u32, box_bytes: u32) {
        let base = swizzle_aligned_shared_base();
        let bar = Mbarrier(base + 32768);
        let tid = thread_idx().x;
        if tid == 0 {
            bar.init(1);
            fence_mbarrier_init();
        }
        // Both barriers are initialised before either block's bytes can land.
        cluster_sync();
        if tid == 0 {
            bar.arrive_expect_tx(box_bytes);
            if cluster_ctarank() == 0 {
                acquire_tensor_map(map);
                tma_load_2d_multicast(base, map, x, y, bar, 0b11);
            }
        }
        bar.wait(0);
        let words = (box_bytes / 4) as usize;
        copy_shared_out(base, box_bytes, out.offset(block_idx().x as usize * words));
        cluster_sync();
    }
}

/// Holds the calling thread back for `rounds` rounds: on the emulator each lets every other
/// runnable thread of the cluster run first (`yield_now`), on the GPU each spins ~1000 cycles.
#[inline(always)]
fn dawdle(rounds: u32) {
    for _ in 0..rounds {
        #[cfg(not(target_arch = "nvptx64"))]
        crate::device::emu::yield_now();
        #[cfg(target_arch = "nvptx64")]
        {
            let t = clock_cycles();
            while clock_cycles().wrapping_sub(t) < 1000 {}
        }
    }
}

/// Stages of the cluster ring probe, and the bytes of one block's A tile (8 rows of 32 `u32`),
/// which is also one half of the shared B tile.
const RING_STAGES: u32 = 2;
const RING_TILE: u32 = 1024;
/// Bytes of dynamic shared memory `probe_cluster_ring` needs: the 1024-byte alignment, the A
/// and B slots, and the barriers.
pub const RING_SHARED_BYTES: u32 = 1024 + 3 * RING_STAGES * RING_TILE + 16 * RING_STAGES;

kernel! {
    threads = 256; cluster = 2;
    /// A miniature of a cluster GEMM's pipeline: a ring of `RING_STAGES` slots, each an A tile
    /// of the block's own (`map_a`, 8 × 32 `u32`, rows `(block · k_tiles + i) · 8`) and a B tile
    /// shared by the cluster (`map_b`, 16 × 32, rows `16 i`), whose half `r` (8 rows) block rank
    /// `r` loads into both blocks with multicast. Thread 0 produces; threads 128..256 consume:
    /// thread `t` folds `acc = 31 acc + a[t] (b[t] + 3 b[t + 256]) + a[t + 128] (b[t + 128] +
    /// 5 b[t + 384])` (wrapping) over the `k_tiles` steps and writes `out[block · 128 + t]`. A
    /// slot is refilled only when both blocks' consumers released it: each arrives on its own
    /// block's `empty` barrier and on the peer's (`arrive_cluster`), 256 arrivals per phase.
    /// The consumers of block rank 1 hold back `slow` rounds before each step ([`dawdle`]), so
    /// a ring that let a producer refill a slot the slow peer has yet to read would show.
    pub fn probe_cluster_ring(
        map_a: In<TensorMap>,
        map_b: In<TensorMap>,
        out: Out<u32>,
        k_tiles: u32,
        slow: u32,
    ) {
        let base = swizzle_aligned_shared_base();
        let a_slot = |s: u32| base + s * RING_TILE;
        let b_slot = |s: u32| base + RING_STAGES * RING_TILE + 2 * s * RING_TILE;
        let bars = base + 3 * RING_STAGES * RING_TILE;
        let full = |s: u32| Mbarrier(bars + 8 * s);
        let empty = |s: u32| Mbarrier(bars + 8 * (RING_STAGES + s));
        let rank = cluster_ctarank();
        let tid = thread_idx().x;
        if tid == 0 {
            for s in 0..RING_STAGES {
                full(s).init(1);
                empty(s).init(2 * 128);
            }
            fence_mbarrier_init();
        }
        cluster_sync();
        if tid == 0 {
            acquire_tensor_map(map_a);
            acquire_tensor_map(map_b);
            for i in 0..k_tiles {
                let (s, u) = (i % RING_STAGES, i / RING_STAGES);
                empty(s).wait((u & 1) ^ 1);
                full(s).arrive_expect_tx(3 * RING_TILE);
                tma_load_2d(a_slot(s), map_a, 0, (block_idx().x * k_tiles + i) * 8, full(s));
                tma_load_2d_multicast(
                    b_slot(s) + rank * RING_TILE,
                    map_b,
                    0,
                    16 * i + 8 * rank,
                    full(s),
                    0b11,
                );
            }
        } else if tid >= 128 {
            let t = (tid - 128) as usize;
            let dyn_base = dynamic_shared_address();
            let words = dynamic_shared::<u32>(((bars - dyn_base) / 4) as usize);
            let word = |addr: u32, i: usize| words.load(((addr - dyn_base) / 4) as usize + i);
            let mut acc = 0u32;
            for i in 0..k_tiles {
                let (s, u) = (i % RING_STAGES, i / RING_STAGES);
                if rank == 1 {
                    dawdle(slow);
                }
                full(s).wait(u & 1);
                let (a, b) = (a_slot(s), b_slot(s));
                let lo = word(a, t).wrapping_mul(word(b, t).wrapping_add(3u32.wrapping_mul(word(b, t + 256))));
                let hi = word(a, t + 128)
                    .wrapping_mul(word(b, t + 128).wrapping_add(5u32.wrapping_mul(word(b, t + 384))));
                acc = acc.wrapping_mul(31).wrapping_add(lo).wrapping_add(hi);
                empty(s).arrive();
                empty(s).arrive_cluster(rank ^ 1);
            }
            out.set(block_idx().x as usize * 128 + t, acc);
        }
        // The peer's last arrivals on this block's barriers happen before either exits.
        cluster_sync();
    }
}
