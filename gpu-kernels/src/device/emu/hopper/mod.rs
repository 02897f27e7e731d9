//! Hopper's asynchronous pieces on the emulator, modelled from the PTX ISA: `mbarrier`
//! (`mbarrier.rs`), TMA, bulk and per-thread `cp.async` copies into shared memory (`tma.rs`),
//! and the warpgroup
//! tensor-core product `wgmma` (`wgmma.rs`). The device API (`device::async_copy`,
//! `device::tensor_core`) calls these on the host; each module documents what it models and
//! the misuse it reports, and `race.rs` checks that the copies and `wgmma`s of a pipeline are
//! ordered by its barriers. All of it sits on the emulator's extension points: per-block state
//! (`with_block_state`: barriers, clocks, in-flight `wgmma` batches), `spin_wait` for barrier
//! waits,
//! warpgroup collectives for `wgmma`, and shared memory by address (`SharedWindow`; dynamic
//! shared memory starts at address 0).
//!
//! **No-ops, and why.** `fence.mbarrier_init`, `fence.proxy.async.shared::cta` and
//! `prefetch.tensormap` have nothing to order or warm on the emulator: there is one memory
//! with no separate async proxy or descriptor cache, copies land when issued, and a block's
//! threads run one at a time. `fence.proxy.tensormap::generic.acquire` only checks the map
//! ([`acquire_tensor_map`]), so a GPU-encoded map is caught at its first use.
//!
//! **Clusters.** Each block keeps its own Hopper state; a remote arrival or a multicast copy
//! from another block of the cluster changes the destination block's state directly
//! (`with_hopper_in`). The race model stays per block: see `race.rs` for what that leaves
//! unchecked across blocks.

mod mbarrier;
mod race;
mod tma;
mod wgmma;

use super::block::Block;
use super::block_state::{BlockExtension, with_block_state, with_block_state_in};
use super::shared::SharedWindow;

pub use mbarrier::{
    mbarrier_arrive, mbarrier_arrive_cluster, mbarrier_arrive_expect_tx, mbarrier_init,
    mbarrier_try_wait, mbarrier_wait,
};
pub use tma::{acquire_tensor_map, bulk_load, cp_async_16, tma_load_2d, tma_load_2d_multicast};
pub use wgmma::{wgmma_commit, wgmma_fence, wgmma_rs, wgmma_ss, wgmma_wait};

/// A block's Hopper state: its barriers, the happens-before clocks and the shared-memory
/// accesses they order (`race.rs`), and every thread's `wgmma` batches.
#[derive(Default)]
struct Hopper {
    bars: mbarrier::Mbarriers,
    races: race::Races,
    wgmma: wgmma::Batches,
}

fn with_hopper<R>(f: impl FnOnce(&mut Hopper) -> R) -> R {
    with_block_state(f)
}

/// The Hopper state of `block`, another block of the running thread's cluster.
fn with_hopper_in<R>(block: &Block, f: impl FnOnce(&mut Hopper) -> R) -> R {
    with_block_state_in(block, f)
}

/// Refuses a cluster-mapped address (`map_shared_to_rank`) where `op` takes a CTA-relative one
/// (`.shared::cta`, or a multicast's per-block offset).
fn cta_relative(addr: u32, op: &str) {
    if super::cluster::is_mapped(addr) {
        panic!(
            "{op}: {addr:#x} is a cluster-mapped address (map_shared_to_rank); this operand \
             takes the block's own shared address"
        );
    }
}

impl BlockExtension for Hopper {
    fn before_sync_threads(&mut self, rank: u32) {
        self.races.before_sync(rank as usize);
    }
    fn after_sync_threads(&mut self, rank: u32) {
        self.races.after_sync(rank as usize);
    }
    fn describe_waits(&self, parts: &mut Vec<String>) {
        self.bars.describe_waits(parts);
    }
    fn on_block_exit(&mut self, _: SharedWindow) -> Result<(), String> {
        self.bars.on_block_exit()?;
        self.wgmma.on_block_exit()
    }
}
