//! Probe kernels: each exercises one device-API piece in isolation (TMA, mbarrier, `wgmma`), so
//! a test can check the piece against the PTX ISA's layouts on the GPU and on the emulator
//! before any real kernel depends on it. Not used by the pipeline.

// `seq!` unrolls loops by substituting each literal index into arithmetic written for all of
// them (`8 * R`, `4 * J + 0`, `KK / 4` with KK = 0, …); the lints below would flag the cases
// that happen to be identities.
#![allow(clippy::identity_op, clippy::erasing_op, clippy::eq_op)]

use crate::device::async_copy::{
    Mbarrier, TensorMap, acquire_tensor_map, bulk_load, fence_mbarrier_init, tma_load_2d,
};
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
