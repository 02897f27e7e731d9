//! The launcher and scheduler: a launch's blocks go to a few OS threads ("drivers"), and each
//! driver runs one block at a time, every GPU thread of it a stackful coroutine (`corosensei`)
//! on the driver's OS thread. A coroutine runs until it has to wait (a barrier, a collective,
//! `yield_now`, a failed `spin_wait` poll) or returns; then the next runnable one is resumed.
//! Nothing inside a block needs a lock, an atomic or a system call.
//!
//! This file is the OS-thread side: `launch`, the drivers, the coroutines and their stack pool,
//! and deadlock detection. What a GPU thread sees of its block and how it gives up the driver
//! (its context, the block's state, barriers, `yield_now`, `spin_wait`) is in `block.rs`.
//!
//! Scheduling is deterministic within a block: threads start in rank order (even blocks) or
//! reverse rank order (odd blocks, so a missing barrier shows up whichever neighbour reads), and
//! are resumed in the order they became runnable. Blocks run in parallel, in no promised order.

use super::block::{Aborted, Block, CURRENT, Resume, Suspend, ThreadCtx};
use super::{EmuError, LaunchConfig, check_limits};
use crate::device::types::Dim3;
use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
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
    block: Box<Block>,
    ctxs: Box<[ThreadCtx]>,
    coroutines: Vec<Option<ThreadCoroutine>>,
    /// Per thread: the `spin_wait` it last polled in vain (None once it did anything else).
    polling: Vec<Option<&'static str>>,
    stacks: Vec<DefaultStack>,
}

impl<'k> Driver<'k> {
    fn new(kernel: &'k (dyn Fn() + Sync), cfg: &LaunchConfig) -> Self {
        let threads = cfg.block.count() as u32;
        let block = Box::new(Block::new(threads, cfg.dynamic_shared_bytes));
        let ctxs = (0..threads)
            .map(|rank| ThreadCtx {
                thread_idx: unflatten(rank as u64, cfg.block),
                block_idx: Dim3::new(0, 0, 0),
                block_dim: cfg.block,
                grid_dim: cfg.grid,
                rank,
                block: std::ptr::null(),
                yielder: Cell::new(std::ptr::null()),
                seq: Default::default(),
            })
            .collect();
        Driver {
            kernel,
            grid_dim: cfg.grid,
            block,
            ctxs,
            coroutines: (0..threads).map(|_| None).collect(),
            polling: vec![None; threads as usize],
            stacks: Vec::new(),
        }
    }

    fn stack(&mut self) -> DefaultStack {
        if let Some(s) = self.stacks.pop().or_else(|| lock(&STACKS).pop()) {
            return s;
        }
        DefaultStack::new(STACK_BYTES).expect("mapping an emulator coroutine stack")
    }

    /// Runs block `linear` of the grid to the end; the error names the block (and thread).
    fn run_block(&mut self, linear: u64) -> Result<(), String> {
        let threads = self.ctxs.len() as u32;
        let idx = unflatten(linear, self.grid_dim);
        if linear.is_multiple_of(2) {
            self.block.reset(idx, 0..threads);
        } else {
            self.block.reset(idx, (0..threads).rev());
        }
        let block: *const Block = &*self.block;
        for c in self.ctxs.iter_mut() {
            c.block_idx = idx;
            c.block = block;
            c.seq = Default::default();
        }
        self.polling.fill(None);
        let mut first_error: Option<String> = None;
        // Polls in vain in a row, and the event count when that streak began.
        let (mut quiet_since, mut vain_polls) = (u64::MAX, 0usize);
        loop {
            let block = &*self.block;
            let next = block.queue.borrow_mut().pop_front();
            let Some(rank) = next else {
                if block.live.get() > 0 && !block.failed() {
                    first_error = Some(format!(
                        "{}: deadlock: {}",
                        block.coordinates(),
                        block.waits(&[])
                    ));
                }
                break;
            };
            let r = rank as usize;
            if self.polling[r].take().is_none() {
                block.events.set(block.events.get() + 1);
            }
            let resume = if self.coroutines[r].is_some() && block.failed() {
                Resume::Abort
            } else {
                Resume::Run
            };
            if self.coroutines[r].is_none() {
                let co = self.start(rank);
                self.coroutines[r] = Some(co);
            }
            let co = self.coroutines[r].as_mut().expect("just made");
            CURRENT.with(|c| c.set(&self.ctxs[r]));
            let result = co.resume(resume);
            CURRENT.with(|c| c.set(std::ptr::null()));
            let block = &*self.block;
            match result {
                CoroutineResult::Yield(Suspend::Blocked) => {}
                CoroutineResult::Yield(Suspend::Yield) => block.queue.borrow_mut().push_back(rank),
                CoroutineResult::Yield(Suspend::Poll(what)) => {
                    self.polling[r] = Some(what);
                    let queued = {
                        let mut q = block.queue.borrow_mut();
                        q.push_back(rank);
                        q.len()
                    };
                    if block.events.get() == quiet_since {
                        vain_polls += 1;
                    } else {
                        (quiet_since, vain_polls) = (block.events.get(), 1);
                    }
                    // Every queued thread has polled in vain since anything last happened.
                    if vain_polls >= queued && !block.failed() {
                        if block.extensions.on_idle(block.shared.window()) {
                            block.events.set(block.events.get() + 1);
                        } else {
                            let pollers: Vec<&'static str> =
                                self.polling.iter().flatten().copied().collect();
                            first_error = Some(format!(
                                "{}: deadlock: {}",
                                block.coordinates(),
                                block.waits(&pollers)
                            ));
                            break;
                        }
                    }
                }
                CoroutineResult::Return(outcome) => {
                    let co = self.coroutines[r].take().expect("it just ran");
                    self.stacks.push(co.into_stack());
                    if let Outcome::Failed(msg) = outcome {
                        let t = self.ctxs[r].thread_idx;
                        block.failed.set(true);
                        first_error.get_or_insert_with(|| {
                            format!(
                                "{} thread ({}, {}, {}): {msg}",
                                block.coordinates(),
                                t.x,
                                t.y,
                                t.z
                            )
                        });
                    }
                    self.exit(rank);
                }
            }
        }
        self.abort_all();
        if first_error.is_none() {
            let block = &*self.block;
            if let Err(msg) = block.extensions.on_block_exit(block.shared.window()) {
                first_error = Some(format!("{}: {msg}", block.coordinates()));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A coroutine for thread `rank`, on a pooled stack.
    fn start(&mut self, rank: u32) -> ThreadCoroutine {
        let stack = self.stack();
        let kernel: *const (dyn Fn() + Sync + 'k) = self.kernel;
        let ctx: *const ThreadCtx = &self.ctxs[rank as usize];
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
        // the coroutine: `run_block` completes every coroutine it starts (`abort_all`), and the
        // driver's `Drop` would unwind any left over before the contexts are freed.
        unsafe { Coroutine::with_stack_unchecked(stack, body) }
    }

    /// Thread `rank` has returned: barriers and collectives stop waiting for it.
    fn exit(&self, rank: u32) {
        let block = &*self.block;
        block.live.set(block.live.get() - 1);
        block.barrier.leave(&block.queue);
        block.groups.leave(rank, &block.queue);
    }

    /// Unwinds every thread still suspended (after a failure or a deadlock).
    fn abort_all(&mut self) {
        self.block.failed.set(true);
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
        self.block.queue.borrow_mut().clear();
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
    check_limits(&cfg)?;
    let blocks = cfg.grid.count();
    let next = AtomicU64::new(0);
    let failed_at = AtomicU64::new(u64::MAX);
    let failure: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let drive = || {
        let mut driver = Driver::new(&kernel, &cfg);
        loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            if b >= blocks || b > failed_at.load(Ordering::Relaxed) {
                break;
            }
            if let Err(msg) = driver.run_block(b) {
                failed_at.fetch_min(b, Ordering::Relaxed);
                let mut f = lock(&failure);
                if f.as_ref().is_none_or(|(at, _)| b < *at) {
                    *f = Some((b, msg));
                }
            }
        }
    };
    let n = drivers().min(blocks.min(MAX_DRIVERS as u64) as usize);
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
