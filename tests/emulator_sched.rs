//! Self-tests of the emulator's scheduler and of its extension points
//! (`gpu_kernels::device::emu`): spin-waits and yields, deadlock detection without timeouts,
//! parallel blocks with a deterministic error report, collectives over warpgroups with shared
//! memory by address, and per-block state for modules that complete work asynchronously.
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod emu_common;

use emu_common::{expect_err, reported_thread};
use gpu_kernels::device::emu::{self, BlockExtension, Exchange, Group, LaunchConfig};
use gpu_kernels::device::{
    Dim3, Out, atomic_add_u32, block_dim, block_idx, dynamic_shared, sync_threads, thread_idx,
    thread_rank,
};
use gpu_kernels::shared_array;
use std::time::{Duration, Instant};

fn cfg(blocks: u32, threads: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: Dim3::new(blocks, 1, 1),
        block: Dim3::new(threads, 1, 1),
        dynamic_shared_bytes: shared_bytes,
    }
}

// ---------------------------------------------------------------------------------------------
// Spin-waits, yields and deadlocks
// ---------------------------------------------------------------------------------------------

shared_array!(fn mailbox() -> [u32; 2]);

/// Thread 0 waits for a flag that the last thread of the block raises; the last thread runs
/// after thread 0 in even blocks and before it in odd ones. With `yield_loop`, thread 0 polls
/// with `yield_now` instead of `spin_wait`.
fn wait_for_last_thread(y: Out<u32>, yield_loop: bool) {
    let t = thread_idx().x;
    let last = block_dim().x - 1;
    if t == 0 {
        mailbox().store(0, 0);
    }
    sync_threads();
    if t == 0 {
        if yield_loop {
            while mailbox().load(0) == 0 {
                emu::yield_now();
            }
        } else {
            emu::spin_wait("mailbox flag", || mailbox().load(0) != 0);
        }
        y.set(block_idx().x as usize, mailbox().load(1));
    } else if t == last {
        mailbox().store(1, 1000 + block_idx().x);
        mailbox().store(0, 1);
    }
}

#[test]
fn spin_wait_and_yield_now_let_the_other_threads_run() {
    for yield_loop in [false, true] {
        let mut y = vec![0u32; 4];
        let yo = Out::from_slice(&mut y);
        emu::launch(cfg(4, 96, 0), || wait_for_last_thread(yo, yield_loop)).unwrap();
        assert_eq!(y, [1000, 1001, 1002, 1003], "yield_loop {yield_loop}");
    }
}

/// Thread 3 spins on a condition nothing will change; the others wait at a barrier.
fn spin_forever() {
    if thread_idx().x == 3 {
        emu::spin_wait("a flag nobody sets", || false);
    } else {
        sync_threads();
    }
}

#[test]
fn a_spin_wait_nothing_can_satisfy_is_reported_as_deadlock_at_once() {
    let start = Instant::now();
    let msg = expect_err(emu::launch(cfg(2, 32, 0), spin_forever));
    assert_eq!(
        msg,
        "block (0, 0, 0): deadlock: sync_threads reached by 31 of 32 live threads; \
         a flag nobody sets polled in vain by 1 of 32 live threads"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    // Every thread spinning (no barrier involved) is a deadlock too.
    let msg = expect_err(emu::launch(cfg(1, 64, 0), || {
        emu::spin_wait("nothing", || false)
    }));
    assert_eq!(
        msg,
        "block (0, 0, 0): deadlock: nothing polled in vain by 64 of 64 live threads"
    );
}

/// A warpgroup collective that one warp of the group never reaches (it waits at a barrier).
fn warpgroup_split() {
    if thread_rank() / 32 == 2 {
        sync_threads();
    } else {
        emu::collective("wgmma.fence", Group::Warpgroup, &[], |_| ());
    }
}

#[test]
fn a_warpgroup_collective_some_warp_never_reaches_is_a_deadlock() {
    let msg = expect_err(emu::launch(cfg(1, 128, 0), warpgroup_split));
    assert_eq!(
        msg,
        "block (0, 0, 0): deadlock: sync_threads reached by 32 of 128 live threads; \
         wgmma.fence in warpgroup 0 reached by 96 of 128 live threads"
    );
}

// ---------------------------------------------------------------------------------------------
// Parallel blocks
// ---------------------------------------------------------------------------------------------

/// Thread 7 of every block in `bad` indexes past the end; every block counts its threads.
fn some_blocks_fail(count: Out<u32>, bad: &[u32]) {
    let b = block_idx().x;
    let i = if bad.contains(&b) && thread_idx().x == 7 {
        1_000_000
    } else {
        b as usize
    };
    atomic_add_u32(count, i, 1);
}

#[test]
fn the_lowest_failing_block_is_reported_however_blocks_interleave() {
    for bad in [&[0u32, 1, 2, 63][..], &[37, 50], &[63]] {
        for _ in 0..10 {
            let mut count = vec![0u32; 64];
            let co = Out::from_slice(&mut count);
            let msg = expect_err(emu::launch(cfg(64, 64, 0), || some_blocks_fail(co, bad)));
            assert_eq!(
                msg,
                format!(
                    "block ({}, 0, 0) thread (7, 0, 0): out-of-bounds atomic of global memory: \
                     index 1000000, length 64",
                    bad[0]
                )
            );
            // Every block before the reported one ran completely.
            assert!(
                count[..bad[0] as usize].iter().all(|c| *c == 64),
                "{count:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Collectives over warpgroups, shared memory by address
// ---------------------------------------------------------------------------------------------

/// Every member publishes (rank, 3·rank + block); each reads two other members.
fn warpgroup_exchange(y: Out<u32>) {
    let rank = thread_rank();
    let words = [rank, 3 * rank + block_idx().x];
    let (a, b, m, n) = emu::collective("test.wg", Group::Warpgroup, &words, |ex| {
        let m = ex.member();
        (
            ex.read((m + 1) % 128, 0),
            ex.read(127 - m, 1),
            m,
            ex.members(),
        )
    });
    let base = (block_idx().x * block_dim().x + rank) as usize * 4;
    for (k, v) in [a, b, m, n].into_iter().enumerate() {
        y.set(base + k, v);
    }
}

#[test]
fn warpgroup_collectives_exchange_between_128_threads() {
    let (blocks, n) = (3u32, 256u32);
    let mut y = vec![u32::MAX; (blocks * n * 4) as usize];
    let yo = Out::from_slice(&mut y);
    emu::launch(cfg(blocks, n, 0), || warpgroup_exchange(yo)).unwrap();
    for b in 0..blocks {
        for rank in 0..n {
            let (g, m) = (rank / 128 * 128, rank % 128);
            let base = ((b * n + rank) * 4) as usize;
            let other = g + 127 - m;
            let want = [g + (m + 1) % 128, 3 * other + b, m, 128];
            assert_eq!(&y[base..base + 4], &want, "block {b}, rank {rank}");
        }
    }
    // 160 threads: the second warpgroup has only 32 members; reading past them is an error.
    let msg = expect_err(emu::launch(cfg(1, 160, 0), || warpgroup_exchange(yo)));
    assert!(
        msg.contains("of a warpgroup with 32 threads (blocks must be whole warpgroups)"),
        "{msg}"
    );
    let t = reported_thread(&msg);
    assert!((128..160).contains(&t), "{msg}");
}

/// Each warpgroup computes, once, the sum over its members of their words (the way an mma tile
/// is computed once per warp); `runs` counts the computations. Threads of rank ≥ `exit_from`
/// return first.
fn sum_once(y: Out<u32>, runs: Out<u32>, exit_from: u32) {
    let rank = thread_rank();
    if rank >= exit_from {
        return;
    }
    for round in 0..3u32 {
        let total = emu::collective("test.once", Group::Warpgroup, &[rank + round], |ex| {
            let r = ex.once(|ex, out| {
                atomic_add_u32(runs, 0, 1);
                out.push(ex.all_words().iter().sum());
            });
            r[0]
        });
        y.set(
            (block_idx().x * block_dim().x + rank) as usize * 3 + round as usize,
            total,
        );
    }
}

#[test]
fn a_result_computed_once_per_collective_is_shared_by_all_members() {
    let (blocks, n) = (2u32, 256u32);
    let mut y = vec![0u32; (blocks * n * 3) as usize];
    let mut runs = vec![0u32; 1];
    let (yo, ro) = (Out::from_slice(&mut y), Out::from_slice(&mut runs));
    emu::launch(cfg(blocks, n, 0), || sum_once(yo, ro, n)).unwrap();
    // 2 blocks × 2 warpgroups × 3 rounds.
    assert_eq!(runs[0], 12);
    for b in 0..blocks {
        for rank in 0..n {
            let g = rank / 128 * 128;
            for round in 0..3 {
                let want: u32 = (g..g + 128).map(|r| r + round).sum();
                assert_eq!(y[((b * n + rank) * 3 + round) as usize], want);
            }
        }
    }
    // `all_words` insists that every member took part: here the last 8 threads have exited.
    let msg = expect_err(emu::launch(cfg(1, 128, 0), || sum_once(yo, ro, 120)));
    assert!(
        msg.contains("test.once reads lane 120, which has exited"),
        "{msg}"
    );
}

shared_array!(fn operand_tile() -> [u32; 128]);

/// A warpgroup "instruction" with a shared-memory operand and result, addressed the way wgmma
/// descriptors address them: by shared-window byte address. Each member reads word `m` of the
/// operand tile and writes twice that to word `m` of the dynamic result array.
fn shared_operand_collective(y: Out<u32>) {
    let t = thread_rank() as usize;
    let (tile, out) = (operand_tile(), dynamic_shared::<u32>(128));
    tile.store(t, 5 * t as u32 + block_idx().x);
    sync_threads();
    emu::collective(
        "test.smem",
        Group::Warpgroup,
        &[tile.addr(), out.addr()],
        |ex: &Exchange<'_>| {
            let (src, dst) = (ex.read(0, 0), ex.read(0, 1));
            let m = ex.member();
            let v = ex.shared().load(src + 4 * m);
            ex.shared().store(dst + 4 * m, 2 * v);
        },
    );
    sync_threads();
    y.set(block_idx().x as usize * 128 + t, out.load(t));
}

#[test]
fn collectives_reach_shared_memory_by_address() {
    let mut y = vec![0u32; 256];
    let yo = Out::from_slice(&mut y);
    emu::launch(cfg(2, 128, 512), || shared_operand_collective(yo)).unwrap();
    for b in 0..2u32 {
        for t in 0..128u32 {
            assert_eq!(y[(b * 128 + t) as usize], 2 * (5 * t + b));
        }
    }
    // Arrays have distinct, aligned addresses; one past the end of every array is outside.
    let msg = expect_err(emu::launch(cfg(1, 1, 64), || {
        let (d, s) = (dynamic_shared::<u32>(16), operand_tile());
        assert!(d.addr() % 16 == 0 && s.addr() % 16 == 0 && d.addr() != s.addr());
        assert_eq!(d.offset(3).addr(), d.addr() + 12);
        emu::shared_window().store(d.addr() + 8, 77);
        assert_eq!(d.load(2), 77);
        let _ = emu::shared_window().load(s.addr() + 4 * 128);
    }));
    assert!(msg.contains("is outside every shared array"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Per-block state: a toy asynchronous copy that lands when the block is idle
// ---------------------------------------------------------------------------------------------

/// Pending "copies" into shared memory (address, value), completed only when no thread of the
/// block can run, as an async copy lands whenever it likes.
#[derive(Default)]
struct ToyAsyncCopies {
    pending: Vec<(u32, u32)>,
    issued: u32,
}

impl BlockExtension for ToyAsyncCopies {
    fn on_idle(&mut self, shared: emu::SharedWindow) -> bool {
        let landed = !self.pending.is_empty();
        for (addr, v) in self.pending.drain(..) {
            shared.store(addr, v);
        }
        landed
    }
    fn on_block_exit(&mut self, _: emu::SharedWindow) -> Result<(), String> {
        match self.pending.len() {
            0 => Ok(()),
            n => Err(format!("{n} async copies never waited for")),
        }
    }
}

shared_array!(fn landing() -> [u32; 64]);

/// Thread t issues a copy of `100·block + t` into slot t, then waits for all copies; with
/// `wait` false the block exits without waiting.
fn toy_copy_kernel(y: Out<u32>, issued: Out<u32>, wait: bool) {
    let t = thread_idx().x;
    let slot = landing().offset(t as usize);
    emu::with_block_state(|c: &mut ToyAsyncCopies| {
        c.pending.push((slot.addr(), 100 * block_idx().x + t));
        c.issued += 1;
    });
    if !wait {
        return;
    }
    emu::spin_wait("toy.wait_all", || {
        emu::with_block_state(|c: &mut ToyAsyncCopies| c.pending.is_empty())
    });
    sync_threads();
    let b = block_idx().x as usize;
    y.set(b * 64 + t as usize, landing().load(((t + 1) % 64) as usize));
    if t == 0 {
        issued.set(b, emu::with_block_state(|c: &mut ToyAsyncCopies| c.issued));
    }
}

#[test]
fn block_state_completes_pending_work_when_the_block_is_idle() {
    let blocks = 4u32;
    let mut y = vec![0u32; 64 * blocks as usize];
    let mut issued = vec![0u32; blocks as usize];
    let (yo, io) = (Out::from_slice(&mut y), Out::from_slice(&mut issued));
    emu::launch(cfg(blocks, 64, 0), || toy_copy_kernel(yo, io, true)).unwrap();
    for b in 0..blocks {
        for t in 0..64u32 {
            assert_eq!(y[(b * 64 + t) as usize], 100 * b + (t + 1) % 64);
        }
    }
    // The state is per block: each block saw only its own 64 copies.
    assert_eq!(issued, [64; 4]);
    // A hook's error at block exit fails the launch with the block's coordinates.
    let msg = expect_err(emu::launch(cfg(2, 64, 0), || {
        toy_copy_kernel(yo, io, false)
    }));
    assert_eq!(msg, "block (0, 0, 0): 64 async copies never waited for");
}
