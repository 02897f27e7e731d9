//! The device API every kernel is written against: thread/block ids, global-memory pointers,
//! shared memory, barriers, warp exchange, atomics, math and float conversions, and the
//! tensor-core tile pieces (`tensor_core`, `async_copy`, `staging`).
//!
//! Each primitive has two implementations with one signature: `nvptx` (PTX instructions and
//! LLVM NVVM intrinsics) and `emu` (the host emulator). Both take the types they share
//! (`Dim3`, `SharedWord`, `WARP_SIZE`) from `types`; kernels see only this module.

#[macro_use]
mod kernel_macro;
pub mod async_copy;
pub mod cluster;
#[cfg(not(target_arch = "nvptx64"))]
pub mod entry;
pub mod float;
pub mod math;
mod ptr;
pub mod staging;
pub mod tensor_core;
mod types;
mod wgmma_shapes;
#[cfg(not(target_arch = "nvptx64"))]
pub use emu::dynamic_shared_address;
#[cfg(target_arch = "nvptx64")]
pub use nvptx::dynamic_shared_address;

#[cfg(target_arch = "nvptx64")]
mod nvptx;
#[cfg(target_arch = "nvptx64")]
use nvptx as backend;

#[cfg(not(target_arch = "nvptx64"))]
pub mod emu;
#[cfg(not(target_arch = "nvptx64"))]
use emu as backend;

pub use backend::{
    Shared, atomic_add_f32, atomic_add_u32, ballot, block_dim, block_idx, dynamic_shared, grid_dim,
    mma_bf16_m16n8k16, shfl_down_f32, shfl_idx_f32, shfl_idx_u32, shfl_xor_f32, shfl_xor_u32,
    sync_threads, sync_warp, thread_idx, threadfence, vote_all, vote_any, warp_max_u32,
};
pub use ptr::{In, Out};
pub use types::{Dim3, SharedWord, WARP_SIZE};

/// Waits until the grids this one depends on programmatically (a launch with programmatic
/// stream serialization, the host's default) have completed and their writes are visible
/// (`griddepcontrol.wait`, sm_90). In a grid launched without that dependency there is nothing
/// to wait for. Every `kernel!` entry calls it first, so a kernel may be launched either way:
/// with the attribute, its blocks are scheduled while the previous kernel drains and start
/// work the moment it completes, instead of after the launch gap.
#[inline(always)]
pub fn grid_dependency_wait() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a wait on the grid's launch dependencies; touches no memory of its own.
    unsafe {
        core::arch::asm!("griddepcontrol.wait;")
    };
}

/// Aborts the kernel: `trap` on the GPU (the launch fails with an error), a panic naming
/// `why` on the host.
#[inline(always)]
pub fn trap(why: &str) -> ! {
    #[cfg(target_arch = "nvptx64")]
    {
        let _ = why;
        // SAFETY: `trap` ends the kernel; nothing after it runs. The `exit` tells ptxas so:
        // with `trap` alone it assumed the path falls through into the next block (an
        // epilogue reading `wgmma` accumulators) and serialised the `wgmma`s (C7518).
        unsafe { core::arch::asm!("trap;", "exit;", options(noreturn)) }
    }
    #[cfg(not(target_arch = "nvptx64"))]
    panic!("{why}")
}

#[cfg(target_arch = "nvptx64")]
#[allow(improper_ctypes)]
unsafe extern "C" {
    // `asm!("setmaxnreg...")` is rejected by LLVM's NVPTX inline-asm parser; the intrinsics
    // work. Their operand must be an immediate: the const generics below guarantee it.
    #[link_name = "llvm.nvvm.setmaxnreg.inc.sync.aligned.u32"]
    fn setmaxnreg_inc(registers: u32);
    #[link_name = "llvm.nvvm.setmaxnreg.dec.sync.aligned.u32"]
    fn setmaxnreg_dec(registers: u32);
}

/// Whether warpgroups with the per-thread register budgets `budgets` (one per warpgroup, after
/// [`lower_registers`] / [`raise_registers`]) fit the pool a block of `threads` threads gets at
/// launch. ptxas gives an entry declared for `threads` threads at most `65536 / threads`
/// registers per thread (and 255), rounded down to a multiple of 8 (168 for 384); `setmaxnreg.inc`
/// waits until the pool holds what it asks for: past the pool it waits forever (a flash
/// attention with a 32-register producer beside two 240-register consumers hung on the H200;
/// the emulator, which does not model registers, ran it). Kernels check their split with a
/// `const` assertion.
pub const fn registers_fit(threads: u32, budgets: &[u32]) -> bool {
    let per_thread = if 65536 / threads < 255 {
        65536 / threads
    } else {
        255
    };
    let pool = per_thread / 8 * 8 * threads;
    let (mut used, mut i) = (0, 0);
    while i < budgets.len() {
        used += budgets[i] * 128;
        i += 1;
    }
    budgets.len() as u32 * 128 == threads && used <= pool
}

/// Lowers this warpgroup's register budget to `N` per thread (`setmaxnreg.dec`), releasing the
/// rest to the block's pool for [`raise_registers`]: a producer warpgroup that only issues
/// copies needs few. Every thread of the warpgroup must call it, converged (`.sync.aligned`),
/// in a kernel declared with `kernel! { threads = ...; }` (ptxas ignores it without a known
/// block size). `N`: a multiple of 8 in 24..=256. A no-op in the emulator.
#[inline(always)]
pub fn lower_registers<const N: u32>() {
    const { assert!(N.is_multiple_of(8) && N >= 24 && N <= 256) };
    // SAFETY: warpgroup-wide and converged by the caller's contract; the count is an
    // immediate in range.
    #[cfg(target_arch = "nvptx64")]
    unsafe {
        setmaxnreg_dec(N)
    };
}

/// Raises this warpgroup's register budget to `N` per thread (`setmaxnreg.inc`), waiting until
/// other warpgroups have released enough. Same contract as [`lower_registers`].
#[inline(always)]
pub fn raise_registers<const N: u32>() {
    const { assert!(N.is_multiple_of(8) && N >= 24 && N <= 256) };
    // SAFETY: as for `lower_registers`.
    #[cfg(target_arch = "nvptx64")]
    unsafe {
        setmaxnreg_inc(N)
    };
}

/// This multiprocessor's cycle counter (`%clock64`), for watchdogs. (`%globaltimer` does not
/// advance on the H200 virtual machines: measured 0 ns over a million-iteration loop.)
#[inline(always)]
pub fn clock_cycles() -> u64 {
    #[cfg(target_arch = "nvptx64")]
    {
        let t: u64;
        // SAFETY: reads a special register.
        unsafe { core::arch::asm!("mov.u64 {0}, %clock64;", out(reg64) t) };
        t
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        // The emulator's clock: nanoseconds, about the GPU's cycle rate.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

/// Linear thread index within the block (x fastest), as the hardware numbers lanes.
#[inline(always)]
pub fn thread_rank() -> u32 {
    let t = thread_idx();
    let d = block_dim();
    (t.z * d.y + t.y) * d.x + t.x
}

/// Lane within the warp.
#[inline(always)]
pub fn lane_id() -> u32 {
    thread_rank() % WARP_SIZE
}

/// Warp index within the block.
#[inline(always)]
pub fn warp_id() -> u32 {
    thread_rank() / WARP_SIZE
}

/// Sum over the 32 lanes of a full warp by an xor butterfly: every lane gets the same value and
/// the order of additions is fixed by lane numbers alone (batch invariant).
#[inline(always)]
pub fn warp_sum_f32(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v += shfl_xor_f32(v, m);
        m >>= 1;
    }
    v
}

/// The lanes of the warp whose `value` equals this lane's, among the lanes where `valid`
/// (`match.any` built from one ballot per bit: `bits` low bits of `value` are compared, higher
/// bits must be zero). Full-warp call; a lane that is not valid gets 0.
#[inline(always)]
pub fn lanes_with_same(value: u32, bits: u32, valid: bool) -> u32 {
    let mut peers = ballot(valid);
    for b in 0..bits {
        let set = (value >> b) & 1 == 1;
        let m = ballot(set);
        peers &= if set { m } else { !m };
    }
    if valid { peers } else { 0 }
}

/// Lanes below this one, as a mask (`%lanemask_lt`).
#[inline(always)]
pub fn lanes_below() -> u32 {
    (1u32 << lane_id()) - 1
}

/// Max over the 32 lanes of a full warp (xor butterfly).
#[inline(always)]
pub fn warp_max_f32(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v = math::max(v, shfl_xor_f32(v, m));
        m >>= 1;
    }
    v
}

/// Sum over a whole block (block size a multiple of 32, at most 1024) in a fixed order: warp
/// butterflies, then warp 0 combines the per-warp partials in warp order. `scratch` needs 32
/// elements and is free again when this returns. Every thread gets the result.
#[inline(always)]
pub fn block_sum_f32(v: f32, scratch: Shared<f32>) -> f32 {
    block_reduce_f32(v, scratch, 0.0, warp_sum_f32)
}

/// Max over a whole block, as `block_sum_f32` (max is exact, so its order does not matter).
#[inline(always)]
pub fn block_max_f32(v: f32, scratch: Shared<f32>) -> f32 {
    block_reduce_f32(v, scratch, f32::NEG_INFINITY, warp_max_f32)
}

/// The shape both block reductions share: `warp_op` within each warp, partials through
/// `scratch`, `warp_op` again over them in warp 0 (missing warps contribute `identity`).
#[inline(always)]
fn block_reduce_f32(v: f32, scratch: Shared<f32>, identity: f32, warp_op: fn(f32) -> f32) -> f32 {
    let w = warp_op(v);
    let n_warps = block_dim().x.div_ceil(WARP_SIZE);
    if lane_id() == 0 {
        scratch.store(warp_id() as usize, w);
    }
    sync_threads();
    if warp_id() == 0 {
        let lane = lane_id();
        let part = if lane < n_warps {
            scratch.load(lane as usize)
        } else {
            identity
        };
        let total = warp_op(part);
        if lane == 0 {
            scratch.store(0, total);
        }
    }
    sync_threads();
    let total = scratch.load(0);
    sync_threads();
    total
}
