//! Thread-block clusters on the emulator. A thread of one block may wait for something only a
//! peer block does (its multicast lands here, its consumers release our slot), so the blocks of
//! a cluster cannot run one after another as independent blocks do: the scheduler runs them as
//! one unit on one driver, every thread of every block a coroutine in one run queue, each
//! block keeping its own shared memory, barriers, collectives and extension state. What they
//! share lives here: the run queue, the event count that deadlock detection watches, the
//! failure flag (a trap in one block ends the whole cluster, as it ends the grid on the GPU),
//! the `cluster_sync` barrier over all their threads, and the way to a peer block.
//!
//! **Addresses.** `map_shared_to_rank(addr, r)` returns `CLUSTER_MAPPED | r << RANK_SHIFT |
//! addr`: shared-window addresses stay below 2^18 (227 KiB), so the top bit marks a
//! `.shared::cluster` address of block `r`. [`SharedWindow`](super::SharedWindow) resolves
//! such addresses to the peer's memory; the `mbarrier` and TMA emulation resolve them to the
//! peer's barriers ([`resolve`]). The instructions that take only CTA-relative addresses
//! (`.shared::cta`) refuse them, as the hardware would misbehave on them.
//!
//! A launch without clusters is a cluster of one block per driver: the same code path, with a
//! queue nobody else uses.

use super::block::{Block, Gate, Queue, Suspend, abort, ctx};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

/// The bit that marks a cluster-mapped shared address, and where the block rank sits in it.
pub(super) const CLUSTER_MAPPED: u32 = 1 << 31;
const RANK_SHIFT: u32 = 24;
const OFFSET_MASK: u32 = (1 << RANK_SHIFT) - 1;
/// The largest cluster the emulator runs (a portable cluster on sm_90 has at most 8 blocks;
/// 16 with the non-portable opt-in).
pub const MAX_CLUSTER_BLOCKS: u32 = 16;

/// What the blocks of one cluster share (see the module docs).
pub(super) struct Cluster {
    pub(super) size: u32,
    /// Runnable threads of all its blocks, by cluster-wide id (`block rank · threads + rank`).
    pub(super) queue: Queue,
    /// Counts things that happened other than vain polls (for deadlock detection).
    pub(super) events: Cell<u64>,
    pub(super) failed: Cell<bool>,
    /// `cluster_sync`: every live thread of every block.
    pub(super) barrier: Gate,
    /// Its blocks by rank (owned by the driver, in a vector that never grows, which outlives
    /// every access).
    blocks: RefCell<Vec<*const Block>>,
}

impl Cluster {
    pub(super) fn new(size: u32, threads: u32) -> Self {
        Cluster {
            size,
            queue: RefCell::new(VecDeque::with_capacity((size * threads) as usize)),
            events: Cell::new(0),
            failed: Cell::new(false),
            barrier: Gate::new(size * threads),
            blocks: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn set_blocks(&self, blocks: Vec<*const Block>) {
        *self.blocks.borrow_mut() = blocks;
    }

    /// Block `rank` of the cluster (`rank` < `size`).
    pub(super) fn block(&self, rank: u32) -> &Block {
        let p = self.blocks.borrow()[rank as usize];
        // SAFETY: the driver makes its blocks once, in a vector that never grows, before handing
        // their addresses here, and drops them only after every coroutine that could call this.
        unsafe { &*p }
    }

    pub(super) fn event(&self) {
        self.events.set(self.events.get() + 1);
    }
}

/// This block's rank in its cluster.
pub fn cluster_ctarank() -> u32 {
    ctx().block().cluster_rank
}

/// Blocks in the running block's cluster.
pub fn cluster_size() -> u32 {
    ctx().block().cluster.size
}

/// `barrier.cluster.arrive.release` + `wait.acquire`: every live thread of every block of the
/// cluster. Exited threads no longer count, as for `sync_threads`. It also orders the calling
/// block's own accesses as a `sync_threads` does (the race model sees it as one).
pub fn cluster_sync() {
    let c = ctx();
    let block = c.block();
    if block.failed() {
        abort();
    }
    block.extensions.on_sync_threads(c.rank, false);
    let cluster = &*block.cluster;
    if !cluster.barrier.arrive(c.gid, &cluster.queue) {
        c.suspend(Suspend::Blocked);
    }
    block.extensions.on_sync_threads(c.rank, true);
}

/// `mapa.shared::cluster.u32`: the address of `addr`'s offset in block `rank`'s shared memory.
pub fn map_shared_to_rank(addr: u32, rank: u32) -> u32 {
    let size = cluster_size();
    if rank >= size {
        panic!(
            "mapa.shared::cluster to block rank {rank} of a cluster of {size} block(s): no such \
             block"
        );
    }
    let offset = if is_mapped(addr) {
        addr & OFFSET_MASK
    } else {
        addr
    };
    if offset > OFFSET_MASK {
        panic!("mapa.shared::cluster of {addr:#x}: not a shared-memory address");
    }
    CLUSTER_MAPPED | rank << RANK_SHIFT | offset
}

/// Whether `addr` is a cluster-mapped address (from [`map_shared_to_rank`]).
pub(super) fn is_mapped(addr: u32) -> bool {
    addr & CLUSTER_MAPPED != 0
}

/// The block a shared address refers to (the running one for a CTA-relative address) and the
/// offset in it; the running thread's own block comes with `true`.
pub(super) fn resolve(addr: u32) -> (&'static Block, u32, bool) {
    let block = ctx().block();
    if !is_mapped(addr) {
        return (block, addr, true);
    }
    let rank = (addr & !CLUSTER_MAPPED) >> RANK_SHIFT;
    let peer = peer(rank, "a cluster-mapped shared address");
    (peer, addr & OFFSET_MASK, rank == block.cluster_rank)
}

/// Block `rank` of the running block's cluster; `what` names the operation for the error when
/// there is no such block.
pub(super) fn peer(rank: u32, what: &str) -> &'static Block {
    let cluster = &ctx().block().cluster;
    if rank >= cluster.size {
        panic!(
            "{what} names block rank {rank} of a cluster of {} block(s): no such block",
            cluster.size
        );
    }
    cluster.block(rank)
}
