//! The launcher and scheduler: a launch's blocks go to a few OS threads ("drivers"), and each
//! driver runs one block at a time (one cluster at a time, for a kernel declared with
//! clusters: its blocks must make progress together, see `cluster.rs`), every GPU thread of it
//! a stackful coroutine (`corosensei`) on the driver's OS thread. A coroutine runs until it has
//! to wait (a barrier, a collective, `yield_now`, a failed `spin_wait` poll) or returns; then
//! the next runnable one is resumed.
//! Nothing inside a block needs a lock, an atomic or a system call.
//!
//! This file is the OS-thread side: `launch`, the drivers, the coroutines and their stack pool,
//! and deadlock detection. What a GPU thread sees of its block and how it gives up the driver
//! (its context, the block's state, barriers, `yield_now`, `spin_wait`) is in `block.rs`.
//!
//! Scheduling is deterministic within a block (and a cluster): threads start in rank order (even
//! blocks) or reverse rank order (odd blocks, so a missing barrier shows up whichever neighbour
//! reads), a cluster's blocks one after another in the queue, and are resumed in the order they
//! became runnable. Clusters run in parallel, in no promised order.

use super::block::{Aborted, Block, CURRENT, Resume, Suspend, ThreadCtx};
use super::cluster::{Cluster, MAX_CLUSTER_BLOCKS};
use super::{EmuError, LaunchConfig, check_limits};
use crate::device::types::Dim3;
use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Stack of one GPU thread's coroutine. Address space only until touched; kernels need a few
/// KiB, a panic (message formatting, unwinding, a backtrace if asked for) some tens.
const STACK_BYTES: usize = 256 * 1024;
/// Stacks kept for reuse between launches (each one is a mapping plus a guard page).
const MAX_POOLED_STACKS: usize = 4096;
/// Upper bound on the OS threads one launch uses (`KILN_EMU_THREADS` overrides the default,
/// which is the machine's available parallelism).
const MAX_DRIVERS: usize = 16;

/// How a thread's kernel invocation ended.
enum Outcome {
    Exited,
    Aborted,
    Failed(String),
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Drivers: one OS thread running blocks one after another
// ---------------------------------------------------------------------------------------------

type ThreadCoroutine = Coroutine<Resume, Suspend, Outcome, DefaultStack>;

/// Coroutine stacks kept between launches (mapping one is two system calls).
static STACKS: Mutex<Vec<DefaultStack>> = Mutex::new(Vec::new());

struct Driver<'k> {
    kernel: &'k (dyn Fn() + Sync),
    grid_dim: Dim3,
    threads: u32,
    cluster: Rc<Cluster>,
    /// The cluster's blocks by rank (one without clusters). Contexts and the cluster point at
    /// them: the vector is made once and never grows, so they do not move.
    blocks: Vec<Block>,
    /// Every thread of every block, by cluster-wide id (`ThreadCtx::gid`).
    ctxs: Box<[ThreadCtx]>,
    coroutines: Vec<Option<ThreadCoroutine>>,
    /// Per thread: the `spin_wait` it last polled in vain (None once it did anything else).
    polling: Vec<Option<&'static str>>,
    stacks: Vec<DefaultStack>,
    /// Linear index of the cluster's first block.
    first: u64,
}

impl<'k> Driver<'k> {
    fn new(kernel: &'k (dyn Fn() + Sync), cfg: &LaunchConfig, cluster_size: u32) -> Self {
        let threads = cfg.block.count() as u32;
        let cluster = Rc::new(Cluster::new(cluster_size, threads));
        let blocks: Vec<Block> = (0..cluster_size)
            .map(|r| Block::new(threads, cfg.dynamic_shared_bytes, cluster.clone(), r))
            .collect();
        cluster.set_blocks(blocks.iter().map(|b| b as *const Block).collect());
        let all = cluster_size * threads;
        let ctxs = (0..all)
            .map(|gid| ThreadCtx {
                thread_idx: unflatten((gid % threads) as u64, cfg.block),
                block_idx: Dim3::new(0, 0, 0),
                block_dim: cfg.block,
                grid_dim: cfg.grid,
                rank: gid % threads,
                gid,
                block: &blocks[(gid / threads) as usize],
                yielder: Cell::new(std::ptr::null()),
                seq: Default::default(),
            })
            .collect();
        Driver {
            kernel,
            grid_dim: cfg.grid,
            threads,
            cluster,
            blocks,
            ctxs,
            coroutines: (0..all).map(|_| None).collect(),
            polling: vec![None; all as usize],
            stacks: Vec::new(),
            first: 0,
        }
    }

    fn stack(&mut self) -> DefaultStack {
        if let Some(s) = self.stacks.pop().or_else(|| lock(&STACKS).pop()) {
            return s;
        }
        DefaultStack::new(STACK_BYTES).expect("mapping an emulator coroutine stack")
    }

    /// The block thread `gid` belongs to.
    fn block_of(&self, gid: u32) -> &Block {
        &self.blocks[(gid / self.threads) as usize]
    }

    /// Runs the cluster whose first block has linear index `first` (every block of the grid is
    /// a cluster of one without clusters) to the end; the error names the block (and thread),
    /// with the linear index of the block it is about.
    fn run_cluster(&mut self, first: u64) -> Result<(), (u64, String)> {
        let threads = self.threads;
        self.first = first;
        let cluster = self.cluster.clone();
        cluster.failed.set(false);
        cluster.barrier.reset(cluster.size * threads);
        {
            let mut q = cluster.queue.borrow_mut();
            q.clear();
            for (r, b) in self.blocks.iter_mut().enumerate() {
                let linear = first + r as u64;
                b.reset(unflatten(linear, self.grid_dim));
                let base = r as u32 * threads;
                if linear.is_multiple_of(2) {
                    q.extend((0..threads).map(|t| base + t));
                } else {
                    q.extend((0..threads).rev().map(|t| base + t));
                }
            }
        }
        for c in self.ctxs.iter_mut() {
            c.block_idx = unflatten(first + (c.gid / threads) as u64, self.grid_dim);
            c.seq = Default::default();
        }
        self.polling.fill(None);
        let mut first_error: Option<(u64, String)> = None;
        // Polls in vain in a row, and the event count when that streak began.
        let (mut quiet_since, mut vain_polls) = (u64::MAX, 0usize);
        loop {
            let next = cluster.queue.borrow_mut().pop_front();
            let Some(gid) = next else {
                if self.blocks.iter().any(|b| b.live.get() > 0) && !cluster.failed.get() {
                    first_error = Some((first, self.deadlock()));
                }
                break;
            };
            let g = gid as usize;
            if self.polling[g].take().is_none() {
                cluster.event();
            }
            let resume = if self.coroutines[g].is_some() && cluster.failed.get() {
                Resume::Abort
            } else {
                Resume::Run
            };
            if self.coroutines[g].is_none() {
                let co = self.start(gid);
                self.coroutines[g] = Some(co);
            }
            let co = self.coroutines[g].as_mut().expect("just made");
            CURRENT.with(|c| c.set(&self.ctxs[g]));
            let result = co.resume(resume);
            CURRENT.with(|c| c.set(std::ptr::null()));
            match result {
                CoroutineResult::Yield(Suspend::Blocked) => {}
                CoroutineResult::Yield(Suspend::Yield) => cluster.queue.borrow_mut().push_back(gid),
                CoroutineResult::Yield(Suspend::Poll(what)) => {
                    self.polling[g] = Some(what);
                    let queued = {
                        let mut q = cluster.queue.borrow_mut();
                        q.push_back(gid);
                        q.len()
                    };
                    if cluster.events.get() == quiet_since {
                        vain_polls += 1;
                    } else {
                        (quiet_since, vain_polls) = (cluster.events.get(), 1);
                    }
                    // Every queued thread has polled in vain since anything last happened.
                    if vain_polls >= queued && !cluster.failed.get() {
                        let woke = self.blocks.iter().fold(false, |woke, b| {
                            b.extensions.on_idle(b.shared.window()) | woke
                        });
                        if woke {
                            cluster.event();
                        } else {
                            first_error = Some((first, self.deadlock()));
                            break;
                        }
                    }
                }
                CoroutineResult::Return(outcome) => {
                    let co = self.coroutines[g].take().expect("it just ran");
                    self.stacks.push(co.into_stack());
                    if let Outcome::Failed(msg) = outcome {
                        let t = self.ctxs[g].thread_idx;
                        cluster.failed.set(true);
                        let block = self.block_of(gid);
                        first_error.get_or_insert_with(|| {
                            (
                                first + (gid / threads) as u64,
                                format!(
                                    "{} thread ({}, {}, {}): {msg}",
                                    block.coordinates(),
                                    t.x,
                                    t.y,
                                    t.z
                                ),
                            )
                        });
                    }
                    self.exit(gid);
                }
            }
        }
        self.abort_all();
        if first_error.is_none() {
            for (r, b) in self.blocks.iter().enumerate() {
                if let Err(msg) = b.extensions.on_block_exit(b.shared.window()) {
                    first_error = Some((first + r as u64, format!("{}: {msg}", b.coordinates())));
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The deadlock report: what every block's live threads wait for. A lone block is
    /// described as it always was; a cluster names each block with live threads, and
    /// `cluster_sync` if threads wait there.
    fn deadlock(&self) -> String {
        let threads = self.threads as usize;
        let pollers = |r: usize| -> Vec<&'static str> {
            self.polling[r * threads..(r + 1) * threads]
                .iter()
                .flatten()
                .copied()
                .collect()
        };
        if self.blocks.len() == 1 {
            let block = &self.blocks[0];
            return format!(
                "{}: deadlock: {}",
                block.coordinates(),
                block.waits(&pollers(0))
            );
        }
        let mut parts = Vec::new();
        let cluster_wait = self.cluster.barrier.waiting();
        if cluster_wait > 0 {
            parts.push(format!(
                "cluster_sync reached by {cluster_wait} of {} live threads of the cluster",
                self.cluster.barrier.expected()
            ));
        }
        for (r, b) in self.blocks.iter().enumerate() {
            let live = b.live.get();
            if live == 0 {
                parts.push(format!(
                    "{} (rank {r}): every thread has exited",
                    b.coordinates()
                ));
                continue;
            }
            let waits = b.waits(&pollers(r));
            parts.push(format!(
                "{} (rank {r}, {live} live threads){}{waits}",
                b.coordinates(),
                if waits.is_empty() { "" } else { ": " }
            ));
        }
        format!(
            "cluster of blocks {}..={}: deadlock: {}",
            self.blocks[0].coordinates(),
            self.blocks[self.blocks.len() - 1].coordinates(),
            parts.join("; ")
        )
    }

    /// A coroutine for thread `gid`, on a pooled stack.
    fn start(&mut self, gid: u32) -> ThreadCoroutine {
        let stack = self.stack();
        let kernel: *const (dyn Fn() + Sync + 'k) = self.kernel;
        let ctx: *const ThreadCtx = &self.ctxs[gid as usize];
        let body = move |yielder: &Yielder<Resume, Suspend>, _: Resume| {
            // SAFETY: the driver keeps `ctxs` and the kernel alive, and finishes (or drops)
            // every coroutine before either goes away.
            let (ctx, kernel) = unsafe { (&*ctx, &*kernel) };
            ctx.yielder.set(yielder);
            match catch_unwind(AssertUnwindSafe(kernel)) {
                Ok(()) => Outcome::Exited,
                Err(p) if p.is::<Aborted>() => Outcome::Aborted,
                Err(p) => Outcome::Failed(
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into()),
                ),
            }
        };
        // SAFETY: `body` borrows the kernel and this driver's contexts, both of which outlive
        // the coroutine: `run_cluster` completes every coroutine it starts (`abort_all`), and the
        // driver's `Drop` would unwind any left over before the contexts are freed.
        unsafe { Coroutine::with_stack_unchecked(stack, body) }
    }

    /// Thread `gid` has returned: barriers and collectives stop waiting for it.
    fn exit(&self, gid: u32) {
        let block = self.block_of(gid);
        let queue = block.queue();
        block.live.set(block.live.get() - 1);
        block.barrier.leave(queue);
        block.groups.leave(gid % self.threads, queue);
        self.cluster.barrier.leave(queue);
    }

    /// Unwinds every thread still suspended (after a failure or a deadlock).
    fn abort_all(&mut self) {
        self.cluster.failed.set(true);
        for r in 0..self.coroutines.len() {
            if let Some(mut co) = self.coroutines[r].take() {
                CURRENT.with(|c| c.set(&self.ctxs[r]));
                let result = co.resume(Resume::Abort);
                CURRENT.with(|c| c.set(std::ptr::null()));
                match result {
                    CoroutineResult::Return(_) => self.stacks.push(co.into_stack()),
                    // A kernel that catches the abort and waits again: unwinding it by force
                    // is all that is left (dropping the coroutine does that).
                    CoroutineResult::Yield(_) => drop(co),
                }
            }
        }
        self.cluster.queue.borrow_mut().clear();
    }
}

impl Drop for Driver<'_> {
    fn drop(&mut self) {
        // Coroutines first: they borrow `ctxs` and the block.
        self.coroutines.clear();
        let mut pool = lock(&STACKS);
        let room = MAX_POOLED_STACKS.saturating_sub(pool.len());
        let keep = self.stacks.len().min(room);
        pool.extend(self.stacks.drain(..keep));
    }
}

fn unflatten(i: u64, d: Dim3) -> Dim3 {
    let x = (i % d.x as u64) as u32;
    let y = ((i / d.x as u64) % d.y as u64) as u32;
    let z = (i / (d.x as u64 * d.y as u64)) as u32;
    Dim3::new(x, y, z)
}

/// OS threads a launch may use: `KILN_EMU_THREADS`, else the available parallelism.
fn drivers() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("KILN_EMU_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, MAX_DRIVERS)
    })
}

/// Runs `kernel` once per thread over `cfg.grid` × `cfg.block`, like a CUDA launch.
///
/// The kernel is a closure that calls a `kernel!` function with its arguments; inside it the
/// device API answers for the calling thread. Blocks run on up to `KILN_EMU_THREADS` OS threads
/// (default: the available parallelism). If blocks fail, the error is that of the failing
/// block with the lowest linear index (the one a sequential run would have reported first);
/// blocks after it may or may not have run.
pub fn launch<F: Fn() + Sync>(cfg: LaunchConfig, kernel: F) -> Result<(), EmuError> {
    launch_cluster(cfg, 1, kernel)
}

/// [`launch`] in thread-block clusters of `cluster` consecutive blocks along x (a kernel
/// declared with `kernel! { threads = N; cluster = C; ... }`): the blocks of a cluster run
/// together on one OS thread (see `cluster.rs`). `cfg.grid.x` must be a multiple of `cluster`.
pub fn launch_cluster<F: Fn() + Sync>(
    cfg: LaunchConfig,
    cluster: u32,
    kernel: F,
) -> Result<(), EmuError> {
    check_limits(&cfg)?;
    if !(1..=MAX_CLUSTER_BLOCKS).contains(&cluster) {
        return Err(EmuError(format!(
            "clusters of {cluster} blocks: the emulator runs 1..={MAX_CLUSTER_BLOCKS}"
        )));
    }
    if !cfg.grid.x.is_multiple_of(cluster) {
        return Err(EmuError(format!(
            "grid {:?}: x ({}) is not a multiple of the cluster size {cluster}",
            cfg.grid, cfg.grid.x
        )));
    }
    let blocks = cfg.grid.count();
    let clusters = blocks / u64::from(cluster);
    let next = AtomicU64::new(0);
    let failed_at = AtomicU64::new(u64::MAX);
    let failure: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let drive = || {
        let mut driver = Driver::new(&kernel, &cfg, cluster);
        loop {
            let first = next.fetch_add(1, Ordering::Relaxed) * u64::from(cluster);
            if first >= blocks || first > failed_at.load(Ordering::Relaxed) {
                break;
            }
            if let Err((b, msg)) = driver.run_cluster(first) {
                failed_at.fetch_min(b, Ordering::Relaxed);
                let mut f = lock(&failure);
                if f.as_ref().is_none_or(|(at, _)| b < *at) {
                    *f = Some((b, msg));
                }
            }
        }
    };
    let n = drivers().min(clusters.min(MAX_DRIVERS as u64) as usize);
    if n <= 1 {
        drive();
    } else {
        std::thread::scope(|s| {
            for _ in 1..n {
                std::thread::Builder::new()
                    .name("kiln-emu".into())
                    .spawn_scoped(s, drive)
                    .expect("spawning an emulator driver thread");
            }
            drive();
        });
    }
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some((_, msg)) => Err(EmuError(msg)),
        None => Ok(()),
    }
}
