//! Host emulation of the device API, so kernel logic is tested on a CPU.
//!
//! **Design.** Every GPU thread of a block is a stackful coroutine (`corosensei`), and one OS
//! thread (a *driver*) runs all of a block's coroutines, switching at the points where a GPU
//! thread waits for others: `sync_threads`, warp collectives (shuffles, votes, `mma.sync`),
//! [`yield_now`] and [`spin_wait`]. The blocks of a launch are shared among a few drivers
//! (`KILN_EMU_THREADS`, default the available parallelism), so blocks run in parallel. Nothing
//! inside a block takes a lock or makes a system call: the cost of a barrier is one coroutine
//! switch per thread. The blocks of a thread-block cluster may wait on each other, so a
//! cluster's blocks run together on one driver, their threads in one run queue ([`cluster`]).
//!
//! **Guarantees** (each checked by the `tests/emulator_*.rs` self-tests):
//! - every global and shared access is bounds-checked; an error names block, thread, index and
//!   length; a panic in any thread fails the launch with its coordinates, and the block's other
//!   threads are aborted where they next wait (none is left hanging);
//! - shared memory starts poisoned in every block (all bits set: NaN as f32, `u32::MAX`);
//! - `sync_threads` is a real barrier that, like `bar.sync` on sm_70+, does not wait for exited
//!   threads; when no thread of a block can run but some have not exited (a barrier or
//!   collective that live threads never all reach, a `spin_wait` whose condition nothing can
//!   change), the launch fails at once with a deadlock report;
//! - warp shuffles and votes exchange values as the hardware does; reading a lane missing from
//!   a partial warp, or one that has exited, is an error, as are lanes of one warp meeting at
//!   different collectives;
//! - atomics are atomic across all threads and blocks; launches over sm_90's limits are refused;
//! - Hopper's `mbarrier`, TMA and bulk copies, and `wgmma` are modelled from the PTX ISA, their
//!   misuse reported, and copies and `wgmma` reads checked for races ([`hopper`];
//!   `tests/emulator_hopper_*.rs`);
//! - clusters: `cluster_sync`, cluster-mapped shared addresses, remote `mbarrier` arrivals and
//!   multicast TMA reach the right block; a failure anywhere in a cluster aborts all of it, and a
//!   deadlock report names each of its blocks (`tests/emulator_cluster.rs`).
//!
//! Scheduling is deterministic within a block (threads start in rank order in even blocks and
//! in reverse order in odd ones, so a read that misses its barrier sees poison whichever
//! neighbour wrote it); the interleaving between blocks is not.
//!
//! **Extension points** for emulating more of Hopper:
//! - [`collective`] over a [`Group`] (`Warp` or `Warpgroup`): every member publishes words,
//!   then reads any member's ([`Exchange::read`], or [`Exchange::all_words`] checked once),
//!   and the block's shared memory through [`Exchange::shared`] ([`SharedWindow`], by
//!   shared-window address as `Shared::addr` gives it); [`Exchange::once`] computes a result
//!   once for the whole group (as `mma.sync` computes its tile once per warp);
//! - [`yield_now`] and [`spin_wait`] for polling loops (`mbarrier.try_wait`,
//!   `cp.async.wait_group`);
//! - [`with_block_state`]: per-block state of type `S: BlockExtension + Default`, with hooks
//!   called when the block is idle (to complete pending async copies), at each `sync_threads`
//!   (to order what they track), when it is reported deadlocked (to say what its threads wait
//!   for), and when it ends.
//!
//! [`hopper`] models `mbarrier`, TMA and bulk copies, and `wgmma` on these points.

mod api;
mod block;
mod block_state;
pub mod cluster;
mod collective;
pub mod hopper;
mod sched;
mod shared;

pub use api::{
    atomic_add_f32, atomic_add_u32, ballot, block_dim, block_idx, grid_dim, mma_bf16_m16n8k16,
    shfl_down_f32, shfl_idx_f32, shfl_idx_u32, shfl_xor_f32, shfl_xor_u32, sync_threads, sync_warp,
    thread_idx, threadfence, vote_all, vote_any, warp_max_u32,
};
pub use block::{spin_wait, yield_now};
pub use block_state::{BlockExtension, with_block_state};
pub use cluster::{
    MAX_CLUSTER_BLOCKS, cluster_ctarank, cluster_size, cluster_sync, map_shared_to_rank,
};
pub use collective::{Exchange, Group, collective};
pub use sched::{launch, launch_cluster};
pub use shared::{
    Shared, SharedWindow, StaticShared, dynamic_shared, dynamic_shared_address, shared_window,
    static_shared,
};

use crate::device::types::Dim3;

/// The hardware limits a launch is checked against (sm_90).
pub const MAX_THREADS_PER_BLOCK: u64 = 1024;
pub const MAX_SHARED_BYTES_PER_BLOCK: usize = 227 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    pub grid: Dim3,
    pub block: Dim3,
    pub dynamic_shared_bytes: u32,
}

/// Why an emulated launch failed: the failing thread's message and its coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmuError(pub String);

impl std::fmt::Display for EmuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for EmuError {}

/// Refuses what sm_90 would refuse to launch.
pub(super) fn check_limits(cfg: &LaunchConfig) -> Result<(), EmuError> {
    let (grid, block) = (cfg.grid, cfg.block);
    let threads = block.count();
    if threads == 0 || grid.count() == 0 {
        return Err(EmuError(format!(
            "empty launch: grid {grid:?}, block {block:?}"
        )));
    }
    if threads > MAX_THREADS_PER_BLOCK || block.z > 64 {
        return Err(EmuError(format!(
            "block {block:?} exceeds the hardware limits"
        )));
    }
    if grid.y > 65535 || grid.z > 65535 || grid.x > i32::MAX as u32 {
        return Err(EmuError(format!(
            "grid {grid:?} exceeds the hardware limits"
        )));
    }
    if cfg.dynamic_shared_bytes as usize > MAX_SHARED_BYTES_PER_BLOCK {
        return Err(EmuError(format!(
            "{} bytes of dynamic shared memory exceed the {MAX_SHARED_BYTES_PER_BLOCK}-byte limit",
            cfg.dynamic_shared_bytes
        )));
    }
    Ok(())
}
