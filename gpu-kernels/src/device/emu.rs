//! Host emulation of the device API, so kernel logic is tested on a CPU.
//!
//! Faithful where it matters for correctness: every thread of a block is a real OS thread, so
//! `sync_threads`, shared memory and warp shuffles interleave as they can on a GPU; shared
//! memory starts poisoned (all bits set: NaN for f32, `u32::MAX` for indices); every global and
//! shared access is bounds-checked; a thread that panics aborts the launch with its coordinates.
//! A barrier that not every live thread reaches is reported as a deadlock instead of hanging.
//! Blocks run one after another (kernels must not depend on inter-block ordering anyway).

use super::ptr::Out;
use super::types::{Dim3, SharedWord, WARP_SIZE};
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The hardware limits a launch is checked against (sm_90).
pub const MAX_THREADS_PER_BLOCK: u64 = 1024;
pub const MAX_SHARED_BYTES_PER_BLOCK: usize = 227 * 1024;
const DEADLOCK_TIMEOUT: Duration = Duration::from_secs(60);
const POISON_WORD: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    pub grid: Dim3,
    pub block: Dim3,
    pub dynamic_shared_bytes: u32,
}

/// Why an emulated launch failed: the first thread's panic message and its coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmuError(pub String);

impl std::fmt::Display for EmuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for EmuError {}

/// Unwinds the other threads of a block once one has failed; carries no message of its own.
struct Aborted;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A reusable barrier that, like `bar.sync` on sm_70+, stops waiting for threads that exited.
struct Barrier {
    state: Mutex<BarrierState>,
    cv: Condvar,
}
struct BarrierState {
    expected: u32,
    arrived: u32,
    generation: u64,
    poisoned: bool,
}

impl Barrier {
    fn new(expected: u32) -> Self {
        Barrier {
            state: Mutex::new(BarrierState {
                expected,
                arrived: 0,
                generation: 0,
                poisoned: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn wait(&self, what: &str) {
        let mut s = lock(&self.state);
        if s.poisoned {
            drop(s);
            resume_unwind(Box::new(Aborted));
        }
        s.arrived += 1;
        if s.arrived == s.expected {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return;
        }
        let generation = s.generation;
        loop {
            let (guard, timeout) = self
                .cv
                .wait_timeout(s, DEADLOCK_TIMEOUT)
                .unwrap_or_else(|e| e.into_inner());
            s = guard;
            if s.poisoned {
                drop(s);
                resume_unwind(Box::new(Aborted));
            }
            if s.generation != generation {
                return;
            }
            if timeout.timed_out() {
                let (arrived, expected) = (s.arrived, s.expected);
                drop(s);
                panic!("deadlock: {what} reached by {arrived} of {expected} live threads");
            }
        }
    }

    /// A thread exited: later waits no longer count it.
    fn leave(&self) {
        let mut s = lock(&self.state);
        s.expected -= 1;
        if s.arrived > 0 && s.arrived == s.expected {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
        }
    }

    fn poison(&self) {
        lock(&self.state).poisoned = true;
        self.cv.notify_all();
    }
}

struct Warp {
    barrier: Barrier,
    lanes: u32,
    /// Words each lane publishes in a warp exchange (a shuffle value, a vote, or the ten
    /// fragment words of an `mma`), in two sets used alternately: a lane cannot start the
    /// exchange after next before every lane has passed the next one's barrier, so one barrier
    /// per exchange suffices.
    slots: [[[AtomicU32; EXCHANGE_WORDS]; WARP_SIZE as usize]; 2],
}

const EXCHANGE_WORDS: usize = 10;

type SharedMemory = Arc<[AtomicU32]>;

fn poisoned_memory(words: usize) -> SharedMemory {
    (0..words).map(|_| AtomicU32::new(POISON_WORD)).collect()
}

struct Block {
    barrier: Barrier,
    warps: Vec<Warp>,
    statics: Mutex<HashMap<&'static str, SharedMemory>>,
    dynamic: SharedMemory,
}

impl Block {
    fn new(threads: u32, dynamic_shared_bytes: u32) -> Self {
        let n_warps = threads.div_ceil(WARP_SIZE);
        Block {
            barrier: Barrier::new(threads),
            warps: (0..n_warps)
                .map(|w| {
                    let lanes = (threads - w * WARP_SIZE).min(WARP_SIZE);
                    Warp {
                        barrier: Barrier::new(lanes),
                        lanes,
                        slots: std::array::from_fn(|_| {
                            std::array::from_fn(|_| {
                                std::array::from_fn(|_| AtomicU32::new(POISON_WORD))
                            })
                        }),
                    }
                })
                .collect(),
            statics: Mutex::new(HashMap::new()),
            dynamic: poisoned_memory(dynamic_shared_bytes as usize / 4),
        }
    }

    fn poison(&self) {
        self.barrier.poison();
        for w in &self.warps {
            w.barrier.poison();
        }
    }
}

#[derive(Clone)]
struct ThreadContext {
    thread_idx: Dim3,
    block_idx: Dim3,
    block_dim: Dim3,
    grid_dim: Dim3,
    rank: u32,
    block: Arc<Block>,
    /// Warp exchanges this thread has made in this block (their parity picks the slot set).
    exchanges: std::cell::Cell<u64>,
}

thread_local! {
    static CONTEXT: RefCell<Option<ThreadContext>> = const { RefCell::new(None) };
}

fn with_context<R>(f: impl FnOnce(&ThreadContext) -> R) -> R {
    CONTEXT.with(|c| match c.borrow().as_ref() {
        Some(ctx) => f(ctx),
        None => panic!("device API used outside an emulated kernel launch"),
    })
}

fn unflatten(i: u64, d: Dim3) -> Dim3 {
    let x = (i % d.x as u64) as u32;
    let y = ((i / d.x as u64) % d.y as u64) as u32;
    let z = (i / (d.x as u64 * d.y as u64)) as u32;
    Dim3::new(x, y, z)
}

/// Runs `kernel` once per thread over `cfg.grid` × `cfg.block`, like a CUDA launch.
///
/// The kernel is a closure that calls a `kernel!` function with its arguments; inside it the
/// device API answers for the calling thread.
pub fn launch<F: Fn() + Sync>(cfg: LaunchConfig, kernel: F) -> Result<(), EmuError> {
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
    let threads = threads as u32;
    let current: Mutex<Option<(Dim3, Arc<Block>)>> = Mutex::new(None);
    let start = std::sync::Barrier::new(threads as usize + 1);
    let end = std::sync::Barrier::new(threads as usize + 1);
    let first_error: Mutex<Option<String>> = Mutex::new(None);

    let per_thread = |rank: u32| {
        loop {
            start.wait();
            let Some((block_idx, blk)) = lock(&current).clone() else {
                break;
            };
            let ctx = ThreadContext {
                thread_idx: unflatten(rank as u64, block),
                block_idx,
                block_dim: block,
                grid_dim: grid,
                rank,
                block: blk.clone(),
                exchanges: std::cell::Cell::new(0),
            };
            CONTEXT.with(|c| *c.borrow_mut() = Some(ctx));
            let result = catch_unwind(AssertUnwindSafe(&kernel));
            CONTEXT.with(|c| *c.borrow_mut() = None);
            if let Err(payload) = result {
                if !payload.is::<Aborted>() {
                    let msg = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into());
                    let t = unflatten(rank as u64, block);
                    let mut first = lock(&first_error);
                    if first.is_none() {
                        *first = Some(format!(
                            "block ({}, {}, {}) thread ({}, {}, {}): {msg}",
                            block_idx.x, block_idx.y, block_idx.z, t.x, t.y, t.z
                        ));
                    }
                }
                blk.poison();
            }
            blk.barrier.leave();
            blk.warps[(rank / WARP_SIZE) as usize].barrier.leave();
            drop(blk);
            end.wait();
        }
    };
    pool::run(threads, &per_thread, || {
        for b in 0..grid.count() {
            *lock(&current) = Some((
                unflatten(b, grid),
                Arc::new(Block::new(threads, cfg.dynamic_shared_bytes)),
            ));
            start.wait();
            end.wait();
            if lock(&first_error).is_some() {
                break;
            }
        }
        *lock(&current) = None;
        start.wait();
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(msg) => Err(EmuError(msg)),
        None => Ok(()),
    }
}

pub fn thread_idx() -> Dim3 {
    with_context(|c| c.thread_idx)
}
pub fn block_idx() -> Dim3 {
    with_context(|c| c.block_idx)
}
pub fn block_dim() -> Dim3 {
    with_context(|c| c.block_dim)
}
pub fn grid_dim() -> Dim3 {
    with_context(|c| c.grid_dim)
}
pub fn sync_threads() {
    let block = with_context(|c| c.block.clone());
    block.barrier.wait("sync_threads");
}

/// Every lane of the warp publishes `words`, waits for the others, then `read(lane, word)`
/// gives any lane's published word; returns `f`'s result.
fn warp_exchange_words<R>(
    what: &str,
    words: &[u32],
    f: impl FnOnce(u32, u32, &dyn Fn(u32, usize) -> u32) -> R,
) -> R {
    let (block, rank, set) = with_context(|c| {
        let n = c.exchanges.get();
        c.exchanges.set(n + 1);
        (c.block.clone(), c.rank, (n % 2) as usize)
    });
    let warp = &block.warps[(rank / WARP_SIZE) as usize];
    let lane = rank % WARP_SIZE;
    for (slot, w) in warp.slots[set][lane as usize].iter().zip(words) {
        slot.store(*w, Ordering::Relaxed);
    }
    warp.barrier.wait(what);
    let read = |l: u32, i: usize| warp.slots[set][l as usize][i].load(Ordering::Relaxed);
    f(lane, warp.lanes, &read)
}

/// Every lane publishes `v`, then reads the value of lane `source(lane)`.
fn warp_exchange(v: u32, source: impl Fn(u32) -> u32) -> u32 {
    warp_exchange_words("warp shuffle", &[v], |lane, lanes, read| {
        let src = source(lane);
        if src >= lanes {
            panic!(
                "warp shuffle reads lane {src} of a warp with {lanes} lanes (blocks must be whole warps)"
            );
        }
        read(src, 0)
    })
}

pub fn shfl_xor_u32(v: u32, lane_mask: u32) -> u32 {
    warp_exchange(v, |lane| (lane ^ lane_mask) & (WARP_SIZE - 1))
}
pub fn shfl_xor_f32(v: f32, lane_mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(v.to_bits(), lane_mask))
}
pub fn shfl_down_f32(v: f32, delta: u32) -> f32 {
    // Out-of-range sources return the caller's own value, as `shfl.sync.down` does.
    f32::from_bits(warp_exchange(v.to_bits(), |lane| {
        if lane + delta < WARP_SIZE {
            lane + delta
        } else {
            lane
        }
    }))
}
pub fn shfl_idx_u32(v: u32, lane: u32) -> u32 {
    warp_exchange(v, |_| lane & (WARP_SIZE - 1))
}
pub fn shfl_idx_f32(v: f32, lane: u32) -> f32 {
    f32::from_bits(shfl_idx_u32(v.to_bits(), lane))
}
pub fn ballot(pred: bool) -> u32 {
    warp_exchange_words("warp vote", &[pred as u32], |_, lanes, read| {
        (0..lanes).fold(0u32, |m, l| m | ((read(l, 0) & 1) << l))
    })
}
pub fn vote_any(pred: bool) -> bool {
    ballot(pred) != 0
}
pub fn vote_all(pred: bool) -> bool {
    let lanes = with_context(|c| c.block.warps[(c.rank / WARP_SIZE) as usize].lanes);
    let full = if lanes == WARP_SIZE {
        u32::MAX
    } else {
        (1 << lanes) - 1
    };
    ballot(pred) == full
}

/// The tensor-core product of `nvptx::mma_bf16_m16n8k16`, computed from the whole warp's
/// fragments (exchanged through the warp's slots). Products are exact in f64 and summed there,
/// then added to C and rounded once: the hardware's internal summation differs in the last
/// bits, so tests compare against references with a tolerance, never emulator bits to GPU bits.
pub fn mma_bf16_m16n8k16(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
    let words = [
        a[0],
        a[1],
        a[2],
        a[3],
        b[0],
        b[1],
        c[0].to_bits(),
        c[1].to_bits(),
        c[2].to_bits(),
        c[3].to_bits(),
    ];
    warp_exchange_words("mma.sync", &words, |lane, lanes, read| {
        if lanes != WARP_SIZE {
            panic!("mma.sync needs a whole warp; this one has {lanes} lanes");
        }
        let half = |w: u32, hi: usize| f64::from(f32::from_bits(((w >> (16 * hi)) & 0xffff) << 16));
        // A[i][k]: lane (i % 8)·4 + (k % 8)/2, register (i ≥ 8) + 2·(k ≥ 8), half k % 2.
        let a_at = |i: usize, k: usize| {
            half(
                read(((i % 8) * 4 + (k % 8) / 2) as u32, (i / 8) + 2 * (k / 8)),
                k % 2,
            )
        };
        // B[k][j]: lane j·4 + (k % 8)/2, register 4 + (k ≥ 8), half k % 2.
        let b_at = |k: usize, j: usize| half(read((j * 4 + (k % 8) / 2) as u32, 4 + k / 8), k % 2);
        let (g, t) = ((lane / 4) as usize, (lane % 4) as usize);
        let out = [
            (g, 2 * t),
            (g, 2 * t + 1),
            (g + 8, 2 * t),
            (g + 8, 2 * t + 1),
        ];
        std::array::from_fn(|r| {
            let (i, j) = out[r];
            let dot: f64 = (0..16).map(|k| a_at(i, k) * b_at(k, j)).sum();
            (dot + f64::from(c[r])) as f32
        })
    })
}

fn atomic_word(p: *mut u32) -> &'static AtomicU32 {
    // SAFETY: `p` is an in-bounds, 4-byte-aligned element of a live buffer (checked by
    // `Out::element_ptr`); every concurrent access to it during the launch is atomic.
    unsafe { AtomicU32::from_ptr(p) }
}

pub fn atomic_add_f32(p: Out<f32>, i: usize, v: f32) -> f32 {
    let word = atomic_word(p.element_ptr(i) as *mut u32);
    let old = word
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            Some((f32::from_bits(w) + v).to_bits())
        })
        .unwrap_or_else(|w| w);
    f32::from_bits(old)
}
pub fn atomic_add_u32(p: Out<u32>, i: usize, v: u32) -> u32 {
    atomic_word(p.element_ptr(i)).fetch_add(v, Ordering::Relaxed)
}

/// A view of one block's shared memory. Accesses are atomic word operations, so threads may
/// interleave freely; `sync_threads` orders them, as on the GPU.
///
/// A raw pointer (not an `Arc`) keeps the handle `Copy`, as on the device: the memory belongs to
/// the block, which outlives every kernel invocation of its threads, and a handle cannot escape a
/// kernel invocation.
pub struct Shared<T> {
    mem: *const AtomicU32,
    len: usize,
    _t: PhantomData<T>,
}
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}

impl<T: SharedWord> Shared<T> {
    fn new(mem: &SharedMemory, len: usize) -> Self {
        Shared {
            mem: mem.as_ptr(),
            len,
            _t: PhantomData,
        }
    }
    fn word(self, i: usize, what: &str) -> &'static AtomicU32 {
        if i >= self.len {
            panic!(
                "out-of-bounds {what} of shared memory: index {i}, length {}",
                self.len
            );
        }
        // SAFETY: in bounds (checked above) of a block's memory, alive while its kernel runs.
        unsafe { &*self.mem.add(i) }
    }
    pub fn load(self, i: usize) -> T {
        T::from_word(self.word(i, "read").load(Ordering::Relaxed))
    }
    pub fn store(self, i: usize, v: T) {
        self.word(i, "write").store(v.to_word(), Ordering::Relaxed)
    }
    pub fn load4(self, i: usize) -> [T; 4] {
        if !i.is_multiple_of(4) {
            panic!("misaligned 16-byte shared read at element {i}");
        }
        std::array::from_fn(|k| self.load(i + k))
    }
    pub fn store4(self, i: usize, v: [T; 4]) {
        if !i.is_multiple_of(4) {
            panic!("misaligned 16-byte shared write at element {i}");
        }
        for (k, x) in v.into_iter().enumerate() {
            self.store(i + k, x);
        }
    }
    pub fn offset(self, offset: usize) -> Self {
        if offset > self.len {
            panic!("shared-memory offset {offset} past length {}", self.len);
        }
        Shared {
            // SAFETY: within (or one past) the array, checked above.
            mem: unsafe { self.mem.add(offset) },
            len: self.len - offset,
            _t: PhantomData,
        }
    }
    pub fn cast<U: SharedWord>(self) -> Shared<U> {
        Shared {
            mem: self.mem,
            len: self.len,
            _t: PhantomData,
        }
    }
}

/// The block's copy of the static shared array `name` (`shared_array!`), created poisoned on
/// first use. The sum of a block's static and dynamic shared memory is checked against sm_90's.
pub fn static_shared<T: SharedWord>(name: &'static str, len: usize) -> Shared<T> {
    let block = with_context(|c| c.block.clone());
    let mut statics = lock(&block.statics);
    let mem = match statics.get(name) {
        Some(m) => m.clone(),
        None => {
            let used: usize =
                statics.values().map(|m| m.len() * 4).sum::<usize>() + block.dynamic.len() * 4;
            if used + len * 4 > MAX_SHARED_BYTES_PER_BLOCK {
                panic!(
                    "shared memory over the per-block limit: {} bytes",
                    used + len * 4
                );
            }
            let m = poisoned_memory(len);
            statics.insert(name, m.clone());
            m
        }
    };
    Shared::new(&mem, len)
}

/// The emulator's half of `shared_array!` (the nvptx backend has its own): nothing to
/// `declare`; the `handle` is the running block's copy, found by the array's path.
#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_static_shared {
    (declare $name:ident, $n:expr) => {};
    (handle $name:ident, $t:ty, $n:expr) => {
        $crate::device::emu::static_shared::<$t>(
            concat!(module_path!(), "::", stringify!($name)),
            $n,
        )
    };
}

/// The block's dynamic shared memory as `len` elements; `len` must fit the launch's size.
pub fn dynamic_shared<T: SharedWord>(len: usize) -> Shared<T> {
    let block = with_context(|c| c.block.clone());
    if len > block.dynamic.len() {
        panic!(
            "kernel wants {} bytes of dynamic shared memory, the launch gave {}",
            len * 4,
            block.dynamic.len() * 4
        );
    }
    Shared::new(&block.dynamic, len)
}

/// Worker threads kept across launches: spawning a thousand OS threads per launch dominated
/// the emulator's run time. Each launch borrows as many idle workers as its block has threads
/// (spawning more when none are idle) and returns them when every one has finished.
mod pool {
    use super::lock;
    use std::sync::mpsc::{Sender, channel};
    use std::sync::{Arc, Condvar, Mutex};

    /// A borrowed job, made `'static` and `Send` for the trip to a worker.
    struct Job {
        f: *const (dyn Fn(u32) + Sync + 'static),
        rank: u32,
        done: Arc<(Mutex<u32>, Condvar)>,
    }
    // SAFETY: `f` points to a `Sync` closure that `run` keeps alive until every job's `done`
    // signal has arrived.
    unsafe impl Send for Job {}

    static IDLE: Mutex<Vec<Sender<Job>>> = Mutex::new(Vec::new());

    fn spawn_worker() -> Sender<Job> {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("kiln-emu".into())
            .stack_size(512 * 1024)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // SAFETY: see `Job`; the closure catches the kernel's panics itself.
                    unsafe { (*job.f)(job.rank) };
                    let (count, cv) = &*job.done;
                    *lock(count) += 1;
                    cv.notify_all();
                }
            })
            .expect("spawning an emulator worker thread");
        tx
    }

    /// Runs `per_thread(rank)` for `rank in 0..threads` on pool workers while `drive` runs on
    /// the calling thread; returns when all of them have finished.
    pub(super) fn run(threads: u32, per_thread: &(dyn Fn(u32) + Sync), drive: impl FnOnce()) {
        let mut workers: Vec<Sender<Job>> = {
            let mut idle = lock(&IDLE);
            let keep = idle.len().saturating_sub(threads as usize);
            idle.split_off(keep)
        };
        while workers.len() < threads as usize {
            workers.push(spawn_worker());
        }
        // SAFETY: only the lifetime is erased; this function does not return before every
        // worker has signalled that it is done with `per_thread`.
        let f: *const (dyn Fn(u32) + Sync + 'static) = unsafe { std::mem::transmute(per_thread) };
        let done = Arc::new((Mutex::new(0u32), Condvar::new()));
        for (rank, w) in workers.iter().enumerate() {
            let job = Job {
                f,
                rank: rank as u32,
                done: done.clone(),
            };
            if w.send(job).is_err() {
                unreachable!("emulator workers live as long as the process");
            }
        }
        drive();
        let (count, cv) = &*done;
        let mut finished = lock(count);
        while *finished < threads {
            finished = cv.wait(finished).unwrap_or_else(|e| e.into_inner());
        }
        drop(finished);
        lock(&IDLE).extend(workers);
    }
}
