//! Self-tests of the CPU emulator (`gpu_kernels::device::emu`): the kernels here are plain host
//! functions written against `gpu_kernels::device`, launched through `emu::launch`.
//!
//! They prove the emulator is faithful where kernel correctness depends on it (barriers really
//! order, warp exchange and atomics compute what the hardware does, every (block, thread) runs
//! exactly once) and that it catches the bugs a GPU would hide or turn into silent corruption
//! (out-of-range global and shared accesses, reads of unwritten shared memory, a missing
//! barrier, shuffles across a partial warp or from exited lanes, lanes at different collectives,
//! barriers that never complete, launches the hardware refuses), each reported with the failing
//! coordinates. The scheduler and the extension points have their own tests in
//! `emulator_sched.rs`.

use gpu_kernels::device::emu::{self, EmuError, LaunchConfig};
use gpu_kernels::device::{
    Dim3, In, Out, Shared, WARP_SIZE, atomic_add_f32, atomic_add_u32, ballot, block_dim, block_idx,
    block_sum_f32, dynamic_shared, grid_dim, lane_id, shfl_down_f32, shfl_idx_f32, shfl_idx_u32,
    shfl_xor_f32, shfl_xor_u32, sync_threads, thread_idx, thread_rank, vote_all, vote_any, warp_id,
    warp_max_f32, warp_sum_f32,
};
use gpu_kernels::shared_array;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: Dim3::new(grid.0, grid.1, grid.2),
        block: Dim3::new(block.0, block.1, block.2),
        dynamic_shared_bytes: shared_bytes,
    }
}

fn linear(blocks: u32, threads: u32) -> LaunchConfig {
    cfg((blocks, 1, 1), (threads, 1, 1), 0)
}

/// The launch's error message; fails the test if the launch succeeded.
fn expect_err(r: Result<(), EmuError>) -> String {
    match r {
        Ok(()) => panic!("the emulator accepted a launch it must reject"),
        Err(e) => e.0,
    }
}

/// A deterministic, well-spread f32 per (block, thread) in about [-13, 13], of either sign and
/// not exactly representable sums: f32 results depend on the order of additions.
fn value(block: u32, t: u32) -> f32 {
    let h = (block.wrapping_mul(0x9E37_79B9) ^ t.wrapping_mul(0x85EB_CA6B)).rotate_left(13);
    ((h % 2001) as f32 - 1000.0) * 0.013
}

fn global_thread() -> usize {
    (block_idx().x * block_dim().x + thread_idx().x) as usize
}

// ---------------------------------------------------------------------------------------------
// (a) Out-of-range global memory: the "deliberately broken kernel is caught" check.
// ---------------------------------------------------------------------------------------------

/// Correct: `y[i] = 2 x[i]` for `i < n`.
fn scale_kernel(x: In<f32>, y: Out<f32>, n: u32) {
    let i = global_thread();
    if i < n as usize {
        y.set(i, 2.0 * x.at(i));
    }
}

/// The classic off-by-one (`<=`): exactly one thread, `i == n`, reads past the end.
fn scale_kernel_off_by_one(x: In<f32>, y: Out<f32>, n: u32) {
    let i = global_thread();
    if i <= n as usize {
        y.set(i, 2.0 * x.at(i));
    }
}

#[test]
fn correct_kernel_runs_and_writes_every_element() {
    let n = 100;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut y = vec![f32::NAN; n];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    emu::launch(linear(2, 64), || scale_kernel(xi, yo, n as u32)).unwrap();
    let want: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
    assert_eq!(y, want);
}

#[test]
fn out_of_range_global_read_is_reported_with_coordinates() {
    let n = 100;
    let x = vec![1.0f32; n];
    let mut y = vec![0.0f32; n + 1];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let msg = expect_err(emu::launch(linear(2, 64), || {
        scale_kernel_off_by_one(xi, yo, n as u32)
    }));
    // Global thread 100 = block 1, thread 36.
    assert_eq!(
        msg,
        "block (1, 0, 0) thread (36, 0, 0): out-of-bounds read of global memory: index 100, length 100"
    );
}

#[test]
fn out_of_range_global_write_is_reported_with_coordinates() {
    let n = 100;
    let x = vec![1.0f32; n + 1];
    let mut y = vec![0.0f32; n];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let msg = expect_err(emu::launch(linear(4, 32), || {
        scale_kernel_off_by_one(xi, yo, n as u32)
    }));
    // Global thread 100 = block 3, thread 4.
    assert_eq!(
        msg,
        "block (3, 0, 0) thread (4, 0, 0): out-of-bounds write of global memory: index 100, length 100"
    );
    // Every in-range element was still written correctly by the threads that ran.
    assert!(y.iter().all(|v| *v == 2.0));
}

/// A 3-D launch where only block (1, 2, 0), thread (3, 1, 1) indexes past the end.
fn one_bad_thread_3d(y: Out<u32>) {
    let (b, t) = (block_idx(), thread_idx());
    let bad = b == Dim3::new(1, 2, 0) && t == Dim3::new(3, 1, 1);
    let i = if bad { 1_000_000 } else { 0 };
    if bad || t == Dim3::new(0, 0, 0) {
        atomic_add_u32(y, i, 1);
    }
}

#[test]
fn out_of_range_reports_3d_block_and_thread() {
    let mut y = vec![0u32; 7];
    let yo = Out::from_slice(&mut y);
    let msg = expect_err(emu::launch(cfg((2, 3, 1), (4, 2, 2), 0), || {
        one_bad_thread_3d(yo)
    }));
    assert_eq!(
        msg,
        "block (1, 2, 0) thread (3, 1, 1): out-of-bounds atomic of global memory: index 1000000, length 7"
    );
}

fn vector_read_kernel(x: In<f32>, y: Out<f32>) {
    let i = 4 * global_thread();
    y.set4(i, x.at4(i));
}

#[test]
fn out_of_range_vector_access_and_offset_are_reported() {
    // 10 elements: thread 2's 4-wide read at 8..12 runs off the end.
    let x = vec![1.0f32; 10];
    let mut y = vec![0.0f32; 12];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let msg = expect_err(emu::launch(linear(1, 3), || vector_read_kernel(xi, yo)));
    assert!(
        msg.starts_with("block (0, 0, 0) thread (2, 0, 0): out-of-bounds 4-wide read")
            && msg.contains("index 8, length 10"),
        "{msg}"
    );

    let msg = expect_err(emu::launch(linear(1, 1), || {
        let _ = xi.offset(11);
    }));
    assert!(
        msg.contains("out-of-bounds offset of global memory: index 11, length 10"),
        "{msg}"
    );
    // An offset view is bounds-checked against what is left of the buffer.
    let msg = expect_err(emu::launch(linear(1, 1), || {
        let _ = xi.offset(6).at(4);
    }));
    assert!(
        msg.contains("out-of-bounds read of global memory: index 4, length 4"),
        "{msg}"
    );
}

/// One failing thread must not leave the rest of its block stuck at a barrier (which would
/// surface as a "deadlock"): the block is aborted promptly and the real error reported.
fn fail_before_barrier(x: In<f32>, y: Out<f32>) {
    let t = thread_idx().x as usize;
    let v = if t == 5 { x.at(1_000) } else { x.at(t) };
    sync_threads();
    y.set(t, v);
}

#[test]
fn a_failing_thread_aborts_its_block_promptly() {
    let x = vec![1.0f32; 64];
    let mut y = vec![0.0f32; 64];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let start = Instant::now();
    let msg = expect_err(emu::launch(linear(3, 64), || fail_before_barrier(xi, yo)));
    assert_eq!(
        msg,
        "block (0, 0, 0) thread (5, 0, 0): out-of-bounds read of global memory: index 1000, length 64"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// (b) Out-of-range shared memory, static and dynamic.
// ---------------------------------------------------------------------------------------------

shared_array!(fn oob_tile() -> [f32; 64]);

fn shared_read_past_end(y: Out<f32>) {
    let t = thread_idx().x as usize;
    oob_tile().store(t, t as f32);
    sync_threads();
    // Thread 63 reads element 64 of a 64-element array.
    y.set(t, oob_tile().load(t + 1));
}

fn shared_write_past_end() {
    let t = thread_idx().x as usize;
    oob_tile().store(t + 3, 0.0);
}

#[test]
fn out_of_range_shared_access_is_reported() {
    let mut y = vec![0.0f32; 64];
    let yo = Out::from_slice(&mut y);
    let msg = expect_err(emu::launch(linear(1, 64), || shared_read_past_end(yo)));
    assert_eq!(
        msg,
        "block (0, 0, 0) thread (63, 0, 0): out-of-bounds read of shared memory: index 64, length 64"
    );

    let msg = expect_err(emu::launch(linear(1, 64), shared_write_past_end));
    assert!(
        msg.contains("out-of-bounds write of shared memory") && msg.contains("length 64"),
        "{msg}"
    );
    // Which thread reports first is up to the scheduler; it is one of the three that overrun.
    let t: u32 = msg["block (0, 0, 0) thread (".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((61..64).contains(&t), "{msg}");
    assert!(msg.contains(&format!("index {}", t + 3)), "{msg}");
}

#[test]
fn out_of_range_dynamic_shared_access_is_reported() {
    // The launch gives 256 bytes = 64 f32; asking for 65 elements is refused.
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        let _ = dynamic_shared::<f32>(65);
    }));
    assert!(
        msg.contains("kernel wants 260 bytes of dynamic shared memory, the launch gave 256"),
        "{msg}"
    );
    // Within the launch's size, indexing is checked against the length the kernel asked for.
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        dynamic_shared::<u32>(16).store(16, 1);
    }));
    assert!(
        msg.contains("out-of-bounds write of shared memory: index 16, length 16"),
        "{msg}"
    );
    // Sub-views are checked too.
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        let s = dynamic_shared::<f32>(64).offset(60);
        s.store(3, 0.0);
        let _ = s.load(4);
    }));
    assert!(
        msg.contains("out-of-bounds read of shared memory: index 4, length 4"),
        "{msg}"
    );
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        let _ = dynamic_shared::<f32>(64).offset(65);
    }));
    assert!(
        msg.contains("shared-memory offset 65 past length 64"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Shared memory starts poisoned.
// ---------------------------------------------------------------------------------------------

shared_array!(fn poison_tile_f32() -> [f32; 128]);
shared_array!(fn poison_tile_u32() -> [u32; 128]);

/// Reads shared memory before anything wrote it (the bug: a missing initialisation).
fn read_before_write(f: Out<f32>, u: Out<u32>, d: Out<f32>) {
    let t = thread_idx().x as usize;
    let base = block_idx().x as usize * 128;
    f.set(base + t, poison_tile_f32().load(t));
    u.set(base + t, poison_tile_u32().load(t));
    d.set(base + t, dynamic_shared::<f32>(128).load(t));
    // Now write everything: the next block must still start from poison, not these values.
    poison_tile_f32().store(t, 1.0);
    poison_tile_u32().store(t, 7);
    dynamic_shared::<f32>(128).store(t, 1.0);
}

#[test]
fn shared_memory_starts_poisoned_in_every_block() {
    let blocks = 3;
    let mut f = vec![0.0f32; 128 * blocks];
    let mut u = vec![0u32; 128 * blocks];
    let mut d = vec![0.0f32; 128 * blocks];
    let (fo, uo, d_o) = (
        Out::from_slice(&mut f),
        Out::from_slice(&mut u),
        Out::from_slice(&mut d),
    );
    emu::launch(cfg((blocks as u32, 1, 1), (128, 1, 1), 512), || {
        read_before_write(fo, uo, d_o)
    })
    .unwrap();
    assert!(f.iter().all(|v| v.is_nan() && v.to_bits() == u32::MAX));
    assert!(u.iter().all(|v| *v == u32::MAX));
    assert!(d.iter().all(|v| v.is_nan()));
}

shared_array!(fn handoff() -> [f32; 64]);

/// Thread t reads what thread t-1 wrote. `with_barrier` false is the bug: no `sync_threads`.
/// To make the race deterministic whatever the schedule, thread 0 writes only after thread 1
/// has read (it signals through `flag`; thread 0 polls with `spin_wait`, which lets the other
/// threads run), so thread 1 must see poison.
fn neighbour_handoff(y: Out<f32>, flag: Out<u32>, with_barrier: bool) {
    let t = thread_idx().x as usize;
    if t == 0 && !with_barrier {
        emu::spin_wait("flag", || atomic_add_u32(flag, 0, 0) != 0);
    }
    handoff().store(t, t as f32);
    if with_barrier {
        sync_threads();
    }
    y.set(t, handoff().load((t + 63) % 64));
    if t == 1 {
        atomic_add_u32(flag, 0, 1);
    }
}

#[test]
fn a_missing_barrier_shows_up_as_poison() {
    let mut y = vec![0.0f32; 64];
    let mut flag = vec![0u32; 1];
    let (yo, fo) = (Out::from_slice(&mut y), Out::from_slice(&mut flag));
    emu::launch(linear(1, 64), || neighbour_handoff(yo, fo, false)).unwrap();
    assert!(
        y[1].is_nan(),
        "thread 1 read {} before thread 0 wrote it",
        y[1]
    );

    emu::launch(linear(1, 64), || neighbour_handoff(yo, fo, true)).unwrap();
    let want: Vec<f32> = (0..64).map(|t| ((t + 63) % 64) as f32).collect();
    assert_eq!(y, want);
}

shared_array!(fn unsynced() -> [f32; 64]);

/// The missing-barrier bug with no help at all: thread t writes slot t, then (no
/// `sync_threads`) reads the slot of thread t + `step`.
fn read_neighbour_without_barrier(y: Out<f32>, step: usize) {
    let t = thread_idx().x as usize;
    unsynced().store(t, t as f32);
    y.set(
        block_idx().x as usize * 64 + t,
        unsynced().load((t + step) % 64),
    );
}

#[test]
fn a_missing_barrier_shows_up_as_poison_whichever_neighbour_is_read() {
    // Threads start in rank order in even blocks and in reverse order in odd ones, so some
    // reader runs before its writer in both blocks, whichever neighbour it reads.
    for step in [1, 63] {
        let mut y = vec![0.0f32; 128];
        let yo = Out::from_slice(&mut y);
        emu::launch(linear(2, 64), || read_neighbour_without_barrier(yo, step)).unwrap();
        for b in 0..2 {
            let block = &y[b * 64..(b + 1) * 64];
            assert!(
                block.iter().any(|v| v.is_nan()),
                "step {step}, block {b}: no thread read poison: {block:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (d) sync_threads orders shared-memory traffic.
// ---------------------------------------------------------------------------------------------

const ROUNDS: u32 = 4;

/// Each round: thread t writes slot t, barrier, reads slot (t+1) % n, barrier (so the next
/// round's write cannot overtake a slower neighbour's read).
fn rotate_through_shared(y: Out<u32>) {
    let n = block_dim().x;
    let t = thread_idx().x;
    let b = block_idx().x;
    let s = dynamic_shared::<u32>(n as usize);
    let mut acc = 0u32;
    for r in 0..ROUNDS {
        s.store(
            t as usize,
            (b * 1_000_000 + r * 10_000 + t).wrapping_mul(2_654_435_761),
        );
        sync_threads();
        acc = acc
            .wrapping_mul(31)
            .wrapping_add(s.load(((t + 1) % n) as usize));
        sync_threads();
    }
    y.set((b * n + t) as usize, acc);
}

#[test]
fn sync_threads_orders_shared_memory_for_32_to_1024_threads() {
    for n in [32u32, 64, 96, 160, 256, 512, 1024] {
        let blocks = 2;
        let mut y = vec![0u32; (blocks * n) as usize];
        let yo = Out::from_slice(&mut y);
        emu::launch(cfg((blocks, 1, 1), (n, 1, 1), 4 * n), || {
            rotate_through_shared(yo)
        })
        .unwrap();
        for b in 0..blocks {
            for t in 0..n {
                let src = (t + 1) % n;
                let want = (0..ROUNDS).fold(0u32, |acc, r| {
                    acc.wrapping_mul(31).wrapping_add(
                        (b * 1_000_000 + r * 10_000 + src).wrapping_mul(2_654_435_761),
                    )
                });
                assert_eq!(
                    y[(b * n + t) as usize],
                    want,
                    "n {n}, block {b}, thread {t}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (e) Barriers and exited threads; deadlock detection.
// ---------------------------------------------------------------------------------------------

shared_array!(fn early_exit_tile() -> [u32; 128]);

/// The upper half of the block returns at once; the lower half meets at two barriers, as
/// `bar.sync` on sm_70+ allows (exited threads are not waited for).
fn half_exit_early(y: Out<u32>) {
    let t = thread_idx().x;
    let half = block_dim().x / 2;
    if t >= half {
        return;
    }
    early_exit_tile().store(t as usize, t * 3);
    sync_threads();
    let v = early_exit_tile().load(((t + 1) % half) as usize);
    sync_threads();
    y.set((block_idx().x * half + t) as usize, v);
}

#[test]
fn threads_that_exit_are_not_waited_for() {
    let start = Instant::now();
    let mut y = vec![u32::MAX; 2 * 64];
    let yo = Out::from_slice(&mut y);
    emu::launch(linear(2, 128), || half_exit_early(yo)).unwrap();
    for b in 0..2 {
        for t in 0..64u32 {
            assert_eq!(y[(b * 64 + t) as usize], ((t + 1) % 64) * 3);
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

/// Lane 0 waits at a warp shuffle, lanes 1..31 at `sync_threads`: neither can complete.
fn split_barriers() {
    if thread_idx().x == 0 {
        let _ = shfl_xor_f32(1.0, 1);
    } else {
        sync_threads();
    }
}

/// No waiting out a timeout: the moment no thread can run, the launch fails.
#[test]
fn a_barrier_not_every_thread_reaches_is_reported_as_deadlock() {
    let start = Instant::now();
    let msg = expect_err(emu::launch(linear(1, 32), split_barriers));
    assert_eq!(
        msg,
        "block (0, 0, 0): deadlock: sync_threads reached by 31 of 32 live threads; \
         shfl.sync.bfly.b32 in warp 0 reached by 1 of 32 live lanes"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// (f) Warp shuffles, votes and reductions against host computations.
// ---------------------------------------------------------------------------------------------

const SHUFFLES: usize = 10;

/// Per thread, `SHUFFLES` results: xor 1/2/4/8/16, down 1/5/31 (f32), idx (f32, u32).
fn warp_exchange_kernel(y: Out<u32>) {
    let t = thread_rank();
    let b = block_idx().x;
    let v = value(b, t);
    let u = v.to_bits() ^ 0xA5A5_0000;
    let lane = lane_id();
    let results = [
        shfl_xor_f32(v, 1).to_bits(),
        shfl_xor_f32(v, 2).to_bits(),
        shfl_xor_u32(u, 4),
        shfl_xor_u32(u, 8),
        shfl_xor_f32(v, 16).to_bits(),
        shfl_down_f32(v, 1).to_bits(),
        shfl_down_f32(v, 5).to_bits(),
        shfl_down_f32(v, 31).to_bits(),
        shfl_idx_f32(v, (lane * 7 + 3) % WARP_SIZE).to_bits(),
        shfl_idx_u32(u, 31 - lane),
    ];
    let base = ((b * block_dim().x + t) as usize) * SHUFFLES;
    for (k, r) in results.into_iter().enumerate() {
        y.set(base + k, r);
    }
}

#[test]
fn warp_shuffles_match_host() {
    let (blocks, n) = (3u32, 128u32);
    let mut y = vec![0u32; (blocks * n) as usize * SHUFFLES];
    let yo = Out::from_slice(&mut y);
    emu::launch(linear(blocks, n), || warp_exchange_kernel(yo)).unwrap();
    for b in 0..blocks {
        for t in 0..n {
            let (warp, lane) = (t / 32 * 32, t % 32);
            let vf = |l: u32| value(b, warp + l).to_bits();
            let vu = |l: u32| vf(l) ^ 0xA5A5_0000;
            let down = |d: u32| {
                if lane + d < 32 {
                    vf(lane + d)
                } else {
                    vf(lane)
                }
            };
            let want = [
                vf(lane ^ 1),
                vf(lane ^ 2),
                vu(lane ^ 4),
                vu(lane ^ 8),
                vf(lane ^ 16),
                down(1),
                down(5),
                down(31),
                vf((lane * 7 + 3) % 32),
                vu(31 - lane),
            ];
            let base = ((b * n + t) as usize) * SHUFFLES;
            assert_eq!(&y[base..base + SHUFFLES], &want, "block {b}, thread {t}");
        }
    }
}

/// Per thread: ballot of a data-dependent predicate, any/all of it, any of false, all of true.
fn vote_kernel(y: Out<u32>) {
    let t = thread_rank();
    let pred = value(block_idx().x, t) > 0.0;
    let base = ((block_idx().x * block_dim().x + t) as usize) * 5;
    y.set(base, ballot(pred));
    y.set(base + 1, vote_any(pred) as u32);
    y.set(base + 2, vote_all(pred) as u32);
    y.set(base + 3, vote_any(false) as u32);
    y.set(base + 4, vote_all(true) as u32);
}

#[test]
fn warp_votes_match_host() {
    let (blocks, n) = (4u32, 96u32);
    let mut y = vec![0u32; (blocks * n * 5) as usize];
    let yo = Out::from_slice(&mut y);
    emu::launch(linear(blocks, n), || vote_kernel(yo)).unwrap();
    let mut saw = [false; 2];
    for b in 0..blocks {
        for w in 0..n / 32 {
            let mask = (0..32u32).fold(0u32, |m, l| {
                m | (((value(b, w * 32 + l) > 0.0) as u32) << l)
            });
            saw[(mask == 0 || mask == u32::MAX) as usize] = true;
            for l in 0..32 {
                let base = ((b * n + w * 32 + l) * 5) as usize;
                let want = [mask, (mask != 0) as u32, (mask == u32::MAX) as u32, 0, 1];
                assert_eq!(&y[base..base + 5], &want, "block {b}, warp {w}, lane {l}");
            }
        }
    }
    assert!(saw[0], "the test data never gave a mixed ballot");
}

/// The xor butterfly of `warp_sum_f32` done on the host: same additions, same order.
fn host_butterfly(lanes: &[f32], op: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    let mut v = lanes.to_vec();
    let mut m = 16;
    while m > 0 {
        v = (0..32).map(|l| op(v[l], v[l ^ m])).collect();
        m >>= 1;
    }
    v
}

fn warp_reduce_kernel(sum: Out<f32>, max: Out<f32>) {
    let i = global_thread();
    let v = value(block_idx().x, thread_idx().x);
    sum.set(i, warp_sum_f32(v));
    max.set(i, warp_max_f32(v));
}

#[test]
fn warp_sum_and_max_match_host_bit_for_bit() {
    let (blocks, n) = (2u32, 256u32);
    let mut sum = vec![f32::NAN; (blocks * n) as usize];
    let mut max = vec![f32::NAN; (blocks * n) as usize];
    let (so, mo) = (Out::from_slice(&mut sum), Out::from_slice(&mut max));
    emu::launch(linear(blocks, n), || warp_reduce_kernel(so, mo)).unwrap();
    for b in 0..blocks {
        for w in 0..n / 32 {
            let lanes: Vec<f32> = (0..32).map(|l| value(b, w * 32 + l)).collect();
            let want_sum = host_butterfly(&lanes, |a, c| a + c);
            let want_max = host_butterfly(&lanes, f32::max);
            let exact: f64 = lanes.iter().map(|v| *v as f64).sum();
            let bound =
                32.0 * f32::EPSILON as f64 * lanes.iter().map(|v| v.abs() as f64).sum::<f64>();
            for l in 0..32usize {
                let i = (b * n + w * 32) as usize + l;
                assert_eq!(
                    sum[i].to_bits(),
                    want_sum[l].to_bits(),
                    "sum, block {b} warp {w}"
                );
                assert_eq!(max[i], lanes.iter().cloned().fold(f32::MIN, f32::max));
                assert_eq!(max[i].to_bits(), want_max[l].to_bits());
                assert!((sum[i] as f64 - exact).abs() <= bound);
            }
            // Every lane of the warp holds the identical value.
            let first = sum[(b * n + w * 32) as usize].to_bits();
            assert!((0..32).all(|l| sum[(b * n + w * 32 + l) as usize].to_bits() == first));
        }
    }
}

shared_array!(fn block_sum_scratch() -> [f32; 32]);

fn block_sum_kernel(y: Out<f32>) {
    let v = value(block_idx().x, thread_idx().x);
    let total = block_sum_f32(v, block_sum_scratch());
    y.set(global_thread(), total);
}

/// `block_sum_f32` done on the host in the same order: warp butterflies, then warp 0's.
fn host_block_sum(vals: &[f32]) -> f32 {
    let n_warps = vals.len().div_ceil(32);
    let partials: Vec<f32> = vals
        .chunks(32)
        .map(|w| host_butterfly(w, |a, c| a + c)[0])
        .collect();
    let lanes: Vec<f32> = (0..32)
        .map(|l| if l < n_warps { partials[l] } else { 0.0 })
        .collect();
    host_butterfly(&lanes, |a, c| a + c)[0]
}

#[test]
fn block_sum_matches_host_bit_for_bit() {
    for n in [32u32, 64, 256, 1024] {
        let blocks = 2u32;
        let mut y = vec![f32::NAN; (blocks * n) as usize];
        let yo = Out::from_slice(&mut y);
        emu::launch(linear(blocks, n), || block_sum_kernel(yo)).unwrap();
        for b in 0..blocks {
            let vals: Vec<f32> = (0..n).map(|t| value(b, t)).collect();
            let want = host_block_sum(&vals);
            let exact: f64 = vals.iter().map(|v| *v as f64).sum();
            let bound =
                64.0 * f32::EPSILON as f64 * vals.iter().map(|v| v.abs() as f64).sum::<f64>();
            assert!(
                (want as f64 - exact).abs() <= bound,
                "n {n}: {want} vs {exact}"
            );
            for t in 0..n {
                assert_eq!(
                    y[(b * n + t) as usize].to_bits(),
                    want.to_bits(),
                    "n {n}, block {b}, thread {t}"
                );
            }
        }
    }
}

fn warp_sum_only(y: Out<f32>) {
    y.set(global_thread(), warp_sum_f32(1.0));
}

fn shfl_idx_from_lane_20(y: Out<f32>) {
    y.set(global_thread(), shfl_idx_f32(1.0, 20));
}

#[test]
fn shuffles_across_a_partial_warp_are_errors() {
    // 48 threads: warp 1 has only lanes 0..15.
    let mut y = vec![0.0f32; 48];
    let yo = Out::from_slice(&mut y);
    for (what, msg) in [
        (
            "warp_sum_f32",
            expect_err(emu::launch(linear(1, 48), || warp_sum_only(yo))),
        ),
        (
            "shfl_idx",
            expect_err(emu::launch(linear(1, 48), || shfl_idx_from_lane_20(yo))),
        ),
    ] {
        assert!(
            msg.starts_with("block (0, 0, 0) thread (")
                && msg.contains("of a warp with 16 lanes (blocks must be whole warps)"),
            "{what}: {msg}"
        );
        let t: u32 = msg["block (0, 0, 0) thread (".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (32..48).contains(&t),
            "{what}: the report names thread {t}: {msg}"
        );
    }
    // The full warp 0 alone is fine.
    emu::launch(linear(1, 32), || warp_sum_only(yo)).unwrap();
    assert!(y[..32].iter().all(|v| *v == 32.0));
}

/// Lanes 16..31 return at once; the rest vote, then shuffle with `xor_mask`.
fn half_warp_exits(y: Out<u32>, xor_mask: u32) {
    let lane = lane_id();
    if lane >= 16 {
        return;
    }
    let base = lane as usize * 4;
    y.set(base, ballot(lane.is_multiple_of(3)));
    y.set(base + 1, vote_all(true) as u32);
    y.set(base + 2, vote_any(lane == 7) as u32);
    y.set(base + 3, shfl_xor_u32(lane * 10, xor_mask));
}

#[test]
fn exited_lanes_take_no_part_in_warp_collectives() {
    let mut y = vec![u32::MAX; 64];
    let yo = Out::from_slice(&mut y);
    // Shuffles within the lanes still there are fine; exited lanes vote nothing.
    emu::launch(linear(1, 32), || half_warp_exits(yo, 1)).unwrap();
    let ballot_want = (0..16u32)
        .filter(|l| l.is_multiple_of(3))
        .fold(0u32, |m, l| m | 1 << l);
    for lane in 0..16u32 {
        let got = &y[lane as usize * 4..lane as usize * 4 + 4];
        assert_eq!(got, [ballot_want, 1, 1, (lane ^ 1) * 10], "lane {lane}");
    }
    // Reading an exited lane is an error (on the GPU: garbage).
    let msg = expect_err(emu::launch(linear(1, 32), || half_warp_exits(yo, 16)));
    assert!(
        msg.starts_with("block (0, 0, 0) thread (")
            && msg.contains("shfl.sync.bfly.b32 reads lane")
            && msg.contains("which has exited"),
        "{msg}"
    );
}

/// Lanes 0..15 ballot, lanes 16..31 shuffle: a collective the warp never completes.
fn mismatched_collectives(y: Out<u32>) {
    let lane = lane_id();
    let v = if lane < 16 {
        ballot(true)
    } else {
        shfl_xor_u32(lane, 1)
    };
    y.set(lane as usize, v);
}

#[test]
fn lanes_at_different_collectives_are_an_error() {
    let mut y = vec![0u32; 32];
    let yo = Out::from_slice(&mut y);
    let msg = expect_err(emu::launch(linear(1, 32), || mismatched_collectives(yo)));
    assert!(
        msg.contains("mismatched warp collective: this thread is at shfl.sync.bfly.b32 (1 words), others at vote.sync.ballot.b32 (1 words)"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// (g) Atomics from many threads and blocks.
// ---------------------------------------------------------------------------------------------

fn atomics_kernel(counter: Out<u32>, olds: Out<u32>, hist: Out<u32>, fsum: Out<f32>) {
    let i = global_thread();
    olds.set(i, atomic_add_u32(counter, 0, 1));
    atomic_add_u32(hist, i % 10, i as u32);
    // Small integers: every order of f32 additions gives the exact sum.
    atomic_add_f32(fsum, 0, 1.0);
    atomic_add_f32(fsum, 1 + i % 3, (i % 7) as f32);
}

#[test]
fn atomics_from_many_threads_and_blocks_sum_correctly() {
    let (blocks, n) = (8u32, 256u32);
    let total = (blocks * n) as usize;
    let mut counter = vec![0u32; 1];
    let mut olds = vec![u32::MAX; total];
    let mut hist = vec![0u32; 10];
    let mut fsum = vec![0.0f32; 4];
    let (c, o, h, f) = (
        Out::from_slice(&mut counter),
        Out::from_slice(&mut olds),
        Out::from_slice(&mut hist),
        Out::from_slice(&mut fsum),
    );
    emu::launch(linear(blocks, n), || atomics_kernel(c, o, h, f)).unwrap();
    assert_eq!(counter[0], total as u32);
    // Atomicity: the old values returned are exactly 0..total, each once.
    olds.sort_unstable();
    assert!(olds.iter().enumerate().all(|(k, v)| *v == k as u32));
    for (k, got) in hist.iter().enumerate() {
        let want: u32 = (0..total).filter(|i| i % 10 == k).map(|i| i as u32).sum();
        assert_eq!(*got, want, "bucket {k}");
    }
    assert_eq!(fsum[0], total as f32);
    for k in 0..3 {
        let want: usize = (0..total).filter(|i| i % 3 == k).map(|i| i % 7).sum();
        assert_eq!(fsum[1 + k], want as f32, "f32 bucket {k}");
    }
}

// ---------------------------------------------------------------------------------------------
// (h) Thread and block indices over 3-D grids and blocks.
// ---------------------------------------------------------------------------------------------

/// Records each (block, thread) it runs as: a visit count and the dims and ranks it saw.
fn index_kernel(count: Out<u32>, seen: Out<u32>) {
    let (b, t, bd, gd) = (block_idx(), thread_idx(), block_dim(), grid_dim());
    let block_linear = (b.z * gd.y + b.y) * gd.x + b.x;
    let threads = bd.x * bd.y * bd.z;
    let i = (block_linear * threads + thread_rank()) as usize;
    atomic_add_u32(count, i, 1);
    let fields = [
        b.x,
        b.y,
        b.z,
        t.x,
        t.y,
        t.z,
        bd.x,
        bd.y,
        bd.z,
        gd.x,
        gd.y,
        gd.z,
        lane_id(),
        warp_id(),
    ];
    for (k, v) in fields.into_iter().enumerate() {
        seen.set(i * 14 + k, v);
    }
}

#[test]
fn every_block_and_thread_of_a_3d_launch_runs_exactly_once() {
    for (grid, block) in [
        ((3, 2, 2), (4, 3, 2)),
        ((1, 1, 1), (8, 8, 16)),
        ((2, 3, 4), (32, 1, 1)),
        ((5, 1, 1), (1, 1, 64)),
    ] {
        let c = cfg(grid, block, 0);
        let total = (c.grid.count() * c.block.count()) as usize;
        let mut count = vec![0u32; total];
        let mut seen = vec![u32::MAX; total * 14];
        let (co, so) = (Out::from_slice(&mut count), Out::from_slice(&mut seen));
        emu::launch(c, || index_kernel(co, so)).unwrap();
        assert!(
            count.iter().all(|v| *v == 1),
            "grid {grid:?} block {block:?}: some (block, thread) ran {:?} times",
            count.iter().find(|v| **v != 1)
        );
        let (g, b) = (c.grid, c.block);
        let mut i = 0;
        for bz in 0..g.z {
            for by in 0..g.y {
                for bx in 0..g.x {
                    for tz in 0..b.z {
                        for ty in 0..b.y {
                            for tx in 0..b.x {
                                let rank = (tz * b.y + ty) * b.x + tx;
                                let want = [
                                    bx,
                                    by,
                                    bz,
                                    tx,
                                    ty,
                                    tz,
                                    b.x,
                                    b.y,
                                    b.z,
                                    g.x,
                                    g.y,
                                    g.z,
                                    rank % 32,
                                    rank / 32,
                                ];
                                assert_eq!(&seen[i * 14..i * 14 + 14], &want);
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(i, total);
    }
}

// ---------------------------------------------------------------------------------------------
// (i) Launches the hardware refuses are refused.
// ---------------------------------------------------------------------------------------------

#[test]
fn launches_over_the_hardware_limits_are_refused_without_running() {
    let ran = AtomicBool::new(false);
    let mark = || ran.store(true, Ordering::Relaxed);
    let cases = [
        (
            cfg((1, 1, 1), (1025, 1, 1), 0),
            "exceeds the hardware limits",
        ),
        (
            cfg((1, 1, 1), (32, 32, 2), 0),
            "exceeds the hardware limits",
        ),
        (cfg((1, 1, 1), (1, 1, 65), 0), "exceeds the hardware limits"),
        (
            cfg((1, 65_536, 1), (32, 1, 1), 0),
            "exceeds the hardware limits",
        ),
        (
            cfg((1, 1, 65_536), (32, 1, 1), 0),
            "exceeds the hardware limits",
        ),
        (cfg((0, 1, 1), (32, 1, 1), 0), "empty launch"),
        (cfg((1, 1, 1), (0, 1, 1), 0), "empty launch"),
        (
            cfg((1, 1, 1), (32, 1, 1), 227 * 1024 + 4),
            "bytes of dynamic shared memory exceed the 232448-byte limit",
        ),
    ];
    for (c, want) in cases {
        let msg = expect_err(emu::launch(c, mark));
        assert!(msg.contains(want), "{c:?}: {msg}");
    }
    assert!(
        !ran.load(Ordering::Relaxed),
        "a refused launch ran its kernel"
    );

    // The limits themselves are allowed: 1024 threads, all 227 KiB of dynamic shared memory.
    emu::launch(cfg((1, 1, 1), (1024, 1, 1), 0), mark).unwrap();
    emu::launch(cfg((1, 1, 1), (1, 1, 1), 227 * 1024), || {
        let s = dynamic_shared::<u32>(227 * 256);
        s.store(227 * 256 - 1, 5);
        assert_eq!(s.load(227 * 256 - 1), 5);
    })
    .unwrap();
    assert!(ran.load(Ordering::Relaxed));
}

shared_array!(fn big_static_tile() -> [f32; 40_000]);

#[test]
fn static_plus_dynamic_shared_memory_over_the_limit_is_an_error() {
    // 160 000 static bytes fit alone...
    emu::launch(linear(1, 1), || big_static_tile().store(0, 1.0)).unwrap();
    // ...but not next to 100 000 dynamic bytes (sm_90 allows 232 448 per block in all).
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 100_000), || {
        big_static_tile().store(0, 1.0)
    }));
    assert!(
        msg.contains("shared memory over the per-block limit: 260000 bytes"),
        "{msg}"
    );
}

/// Sanity of the helpers the tests lean on: `Shared` is usable as a kernel argument too.
fn shared_handle_argument(s: Shared<f32>, y: Out<f32>) {
    let t = thread_idx().x as usize;
    s.store(t, t as f32 * 0.5);
    sync_threads();
    y.set(t, s.load(31 - t));
}

#[test]
fn shared_handles_pass_through_functions() {
    let mut y = vec![f32::NAN; 32];
    let yo = Out::from_slice(&mut y);
    emu::launch(cfg((1, 1, 1), (32, 1, 1), 128), || {
        shared_handle_argument(dynamic_shared::<f32>(32), yo)
    })
    .unwrap();
    let want: Vec<f32> = (0..32).map(|t| (31 - t) as f32 * 0.5).collect();
    assert_eq!(y, want);
}
