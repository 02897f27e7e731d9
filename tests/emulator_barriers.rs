//! Self-tests of the CPU emulator (`gpu_kernels::device::emu`), shared memory and barriers:
//! shared memory starts poisoned in every block, so reads of unwritten shared memory and a
//! missing barrier show up as poison whatever the schedule; `sync_threads` orders
//! shared-memory traffic for 32 to 1024 threads; threads that exit are not waited for (as
//! `bar.sync` on sm_70+); and barriers that never complete are reported as a deadlock at once,
//! naming what each thread waits at, without waiting out a timeout.
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod emu_common;

use emu_common::{cfg, expect_err, linear};
use gpu_kernels::device::emu;
use gpu_kernels::device::{
    Out, atomic_add_u32, block_dim, block_idx, dynamic_shared, shfl_xor_f32, sync_threads,
    thread_idx,
};
use gpu_kernels::shared_array;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Shared memory starts poisoned.
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
// sync_threads orders shared-memory traffic.
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
// Barriers and exited threads; deadlock detection.
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
