//! Helpers of the emulator's self-tests (`tests/emulator_*.rs`): launch configurations, the
//! message of a launch that must fail, a thread's index in a 1-D launch; [`hopper`] adds what
//! the tests of the Hopper model share (16-byte aligned host tensors and their tensor maps,
//! random bf16 operands).
//!
//! The self-tests, by what they cover: `emulator_bounds.rs` (out-of-range global and shared
//! accesses), `emulator_barriers.rs` (poisoned shared memory, barriers, deadlocks),
//! `emulator_warp.rs` (warp shuffles, votes and reductions), `emulator_launch.rs` (atomics,
//! indices, launch limits), `emulator_sched.rs` (the scheduler and the extension points), and
//! the Hopper model: `emulator_hopper_mbarrier.rs`, `emulator_hopper_tma.rs` (TMA and bulk
//! copies), `emulator_hopper_wgmma.rs` (wgmma, and races between copies and wgmmas), then the
//! real kernels built on them, `emulator_hopper_gemm.rs` and
//! `emulator_hopper_flash_attention.rs`; and thread-block clusters (multicast TMA, remote
//! arrivals, a ring shared by two blocks), `emulator_cluster.rs`.
#![allow(dead_code)]

pub mod hopper;

use gpu_kernels::device::emu::{EmuError, LaunchConfig};
use gpu_kernels::device::{Dim3, block_dim, block_idx, thread_idx};

/// A launch of a `grid` of `block`s with `shared_bytes` of dynamic shared memory.
pub fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: Dim3::new(grid.0, grid.1, grid.2),
        block: Dim3::new(block.0, block.1, block.2),
        dynamic_shared_bytes: shared_bytes,
    }
}

/// `blocks` 1-D blocks of `threads` threads, no dynamic shared memory.
pub fn linear(blocks: u32, threads: u32) -> LaunchConfig {
    cfg((blocks, 1, 1), (threads, 1, 1), 0)
}

/// The launch's error message; fails the test if the launch succeeded.
pub fn expect_err(r: Result<(), EmuError>) -> String {
    match r {
        Ok(()) => panic!("the emulator accepted a launch it must reject"),
        Err(e) => e.0,
    }
}

/// The x index of the thread a launch error of block (0, 0, 0) names ("block (0, 0, 0) thread
/// (T, …"): which thread reports first is up to the scheduler.
pub fn reported_thread(msg: &str) -> u32 {
    msg.strip_prefix("block (0, 0, 0) thread (")
        .and_then(|rest| rest.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no thread of block (0, 0, 0) named in {msg:?}"))
}

/// The thread's index in a 1-D launch: `block_idx().x * block_dim().x + thread_idx().x`.
pub fn global_thread() -> usize {
    (block_idx().x * block_dim().x + thread_idx().x) as usize
}
