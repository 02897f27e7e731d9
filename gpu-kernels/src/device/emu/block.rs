//! A running block as its GPU threads see it, and how they wait: the running thread's context
//! (`ctx`, through which the device API answers), the block's state (`Block`: barrier,
//! collectives, shared memory, extensions, and the cluster it belongs to, which holds the run
//! queue), the `Gate` that the block barrier, `cluster_sync` and the collectives are built on,
//! and the waiting primitives (`sync_threads`' `barrier`, `yield_now`,
//! `spin_wait`), which suspend the thread's coroutine with a `Suspend` for the scheduler
//! (`sched.rs`) to act on.

use super::block_state::Extensions;
use super::cluster::Cluster;
use super::collective::{GROUP_KINDS, Groups};
use super::shared::SharedMem;
use crate::device::types::Dim3;
use corosensei::Yielder;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::resume_unwind;
use std::rc::Rc;

/// How a waiting thread is resumed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Resume {
    Run,
    /// Another thread of the block failed: unwind.
    Abort,
}

/// Why a thread gave up the driver.
#[derive(Clone, Copy)]
pub(super) enum Suspend {
    /// At a barrier or a collective: whoever completes it queues the thread again.
    Blocked,
    /// `yield_now`: runnable again at once, after the others.
    Yield,
    /// A `spin_wait` condition was false: runnable again, but it changed nothing.
    Poll(&'static str),
}

/// Unwinds the other threads of a block once one has failed; carries no message of its own.
pub(super) struct Aborted;

pub(super) fn abort() -> ! {
    resume_unwind(Box::new(Aborted))
}

// ---------------------------------------------------------------------------------------------
// The running thread
// ---------------------------------------------------------------------------------------------

/// What the device API needs to know about the GPU thread that is running.
pub(super) struct ThreadCtx {
    pub thread_idx: Dim3,
    pub block_idx: Dim3,
    pub block_dim: Dim3,
    pub grid_dim: Dim3,
    pub rank: u32,
    /// Its id in the cluster's run queue: `block rank in the cluster · threads + rank` (the
    /// same as `rank` without clusters).
    pub gid: u32,
    pub(super) block: *const Block,
    pub(super) yielder: Cell<*const Yielder<Resume, Suspend>>,
    /// Collectives this thread has taken part in, per group kind (the parity picks the buffer).
    pub(super) seq: [Cell<u64>; GROUP_KINDS],
}

impl ThreadCtx {
    pub(super) fn block(&self) -> &Block {
        // SAFETY: set by `run_block` before any thread of the block runs; the block outlives
        // every coroutine of its threads (see `Driver`).
        unsafe { &*self.block }
    }

    /// Gives the OS thread back to the scheduler until resumed; unwinds if the block failed.
    pub(super) fn suspend(&self, why: Suspend) {
        // SAFETY: set when the coroutine starts; the yielder lives as long as the coroutine.
        let yielder = unsafe { &*self.yielder.get() };
        if yielder.suspend(why) == Resume::Abort {
            abort();
        }
    }
}

thread_local! {
    /// The thread context of the coroutine the driver on this OS thread is running (null when
    /// none): set before every resume, so the device API always answers for the running thread.
    pub(super) static CURRENT: Cell<*const ThreadCtx> = const { Cell::new(std::ptr::null()) };
}

/// The running GPU thread. The reference is only valid while that thread runs: use it, never
/// store it.
#[inline(always)]
pub(super) fn ctx() -> &'static ThreadCtx {
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        outside_launch();
    }
    // SAFETY: non-null only while a coroutine of a live block runs on this OS thread.
    unsafe { &*p }
}

#[cold]
#[inline(never)]
fn outside_launch() -> ! {
    panic!("device API used outside an emulated kernel launch")
}

// ---------------------------------------------------------------------------------------------
// Waiting: barriers, yields, spin-waits
// ---------------------------------------------------------------------------------------------

/// A cluster's runnable threads (cluster-wide ids, `ThreadCtx::gid`), in the order they will
/// run.
pub(super) type Queue = RefCell<VecDeque<u32>>;

/// A set of threads that wait for each other: the block barrier, `cluster_sync`, or a group's
/// collective. It holds and requeues cluster-wide thread ids.
/// Like `bar.sync` on sm_70+, it waits for live members only: exited threads leave it.
pub(super) struct Gate {
    expected: Cell<u32>,
    waiting: RefCell<Vec<u32>>,
}

impl Gate {
    pub(super) fn new(members: u32) -> Self {
        Gate {
            expected: Cell::new(members),
            waiting: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn reset(&self, members: u32) {
        self.expected.set(members);
        self.waiting.borrow_mut().clear();
    }

    /// Thread `gid` arrives; true if it completed the gate (the waiters are queued again), false
    /// if it must suspend.
    pub(super) fn arrive(&self, gid: u32, queue: &Queue) -> bool {
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() as u32 + 1 >= self.expected.get() {
            queue.borrow_mut().extend(waiting.drain(..));
            true
        } else {
            waiting.push(gid);
            false
        }
    }

    /// A member exited: later waits no longer count it, and it may have been the last one
    /// the others were waiting for.
    pub(super) fn leave(&self, queue: &Queue) {
        self.expected.set(self.expected.get() - 1);
        let mut waiting = self.waiting.borrow_mut();
        if !waiting.is_empty() && waiting.len() as u32 >= self.expected.get() {
            queue.borrow_mut().extend(waiting.drain(..));
        }
    }

    /// Threads waiting now.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Live members.
    pub(super) fn expected(&self) -> u32 {
        self.expected.get()
    }
}

/// `bar.sync 0`: waits until every live thread of the block has arrived.
pub(super) fn barrier() {
    let c = ctx();
    let block = c.block();
    if block.failed() {
        abort();
    }
    block.extensions.on_sync_threads(c.rank, false);
    if !block.barrier.arrive(c.gid, block.queue()) {
        c.suspend(Suspend::Blocked);
    }
    block.extensions.on_sync_threads(c.rank, true);
}

/// Lets the block's other runnable threads run before this one continues: for a thread that
/// polls something another thread of the block will change. A loop of `yield_now` is not
/// detected as a deadlock (the emulator cannot know what the caller did between two yields):
/// prefer [`spin_wait`] for waiting on a condition.
pub fn yield_now() {
    let c = ctx();
    if c.block().failed() {
        abort();
    }
    c.suspend(Suspend::Yield);
}

/// Polls `cond` until it holds, letting the block's other threads run between polls: the
/// emulation of `mbarrier.try_wait` loops, `cp.async.wait_group` and other spin-waits.
/// `cond` must only read state that this block (or its cluster) changes (its threads, its
/// shared memory, its `BlockExtension`s), never another cluster's progress: when every live
/// thread of the cluster is waiting (at a barrier, a collective, or here with `cond` false) and a round of polls
/// changed nothing, the extensions get a chance (`BlockExtension::on_idle`) and then the launch
/// fails with a deadlock naming `what`.
pub fn spin_wait(what: &'static str, mut cond: impl FnMut() -> bool) {
    let c = ctx();
    loop {
        if cond() {
            c.block().cluster.event();
            return;
        }
        if c.block().failed() {
            abort();
        }
        c.suspend(Suspend::Poll(what));
    }
}

// ---------------------------------------------------------------------------------------------
// A block
// ---------------------------------------------------------------------------------------------

/// One running block: its barrier, collectives, shared memory and extensions, and its cluster
/// (run queue, failure flag, peers). Owned by one driver (OS thread) and reset for each block
/// it runs; coroutines reach it through their `ThreadCtx`, and only one of them runs at a time.
pub(super) struct Block {
    idx: Dim3,
    threads: u32,
    pub(super) live: Cell<u32>,
    pub(super) barrier: Gate,
    pub(super) groups: Groups,
    pub(super) shared: SharedMem,
    pub(super) extensions: Extensions,
    pub(super) cluster: Rc<Cluster>,
    /// Its rank in the cluster (`%cluster_ctarank`).
    pub(super) cluster_rank: u32,
}

impl Block {
    pub(super) fn new(
        threads: u32,
        dynamic_shared_bytes: u32,
        cluster: Rc<Cluster>,
        cluster_rank: u32,
    ) -> Self {
        Block {
            idx: Dim3::new(0, 0, 0),
            threads,
            live: Cell::new(threads),
            barrier: Gate::new(threads),
            groups: Groups::new(threads),
            shared: SharedMem::new(dynamic_shared_bytes),
            extensions: Extensions::default(),
            cluster,
            cluster_rank,
        }
    }

    /// Ready for the block at `idx` (the driver resets the cluster's queue and flags).
    pub(super) fn reset(&mut self, idx: Dim3) {
        self.idx = idx;
        self.live.set(self.threads);
        self.barrier.reset(self.threads);
        self.groups.reset();
        self.shared.reset();
        self.extensions.clear();
    }

    /// Its cluster's run queue.
    #[inline(always)]
    pub(super) fn queue(&self) -> &Queue {
        &self.cluster.queue
    }

    /// Whether a thread of its cluster failed (every thread then unwinds).
    #[inline(always)]
    pub(super) fn failed(&self) -> bool {
        self.cluster.failed.get()
    }

    /// Everything live threads are stuck on, for a deadlock report.
    pub(super) fn waits(&self, pollers: &[&'static str]) -> String {
        let mut parts = Vec::new();
        let n = self.barrier.waiting();
        if n > 0 {
            parts.push(format!(
                "sync_threads reached by {n} of {} live threads",
                self.barrier.expected()
            ));
        }
        self.groups.waits(&mut parts);
        let mut whats: Vec<&str> = pollers.to_vec();
        whats.sort_unstable();
        whats.dedup();
        for w in whats {
            let n = pollers.iter().filter(|p| **p == w).count();
            parts.push(format!(
                "{w} polled in vain by {n} of {} live threads",
                self.live.get()
            ));
        }
        self.extensions.describe_waits(&mut parts);
        parts.join("; ")
    }

    pub(super) fn coordinates(&self) -> String {
        let b = self.idx;
        format!("block ({}, {}, {})", b.x, b.y, b.z)
    }
}
