//! The emulator's Hopper model (`gpu_kernels::device::emu::hopper`), `mbarrier`: phases, parity
//! and transaction bytes (announced before or after they land) against the PTX ISA's rules, the
//! probe kernel's barrier, and misuse (a barrier nobody initialised, an extra arrival, bytes
//! announced that never land or land unannounced, re-initialisation with work pending, a wait
//! nothing satisfies), each with the emulator's exact message, which names the block and, where
//! one is to blame, the thread.
//!
//! Everything launches at the emulator level (`emu::launch`), with tensor maps encoded by
//! `TensorMap::emulated_2d` over host vectors (`emu_common::hopper`).
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod emu_common;

use emu_common::expect_err;
use emu_common::hopper::{Aligned, cfg};
use gpu_kernels::device::async_copy::{Mbarrier, bulk_load, fence_mbarrier_init};
use gpu_kernels::device::emu;
use gpu_kernels::device::{
    In, Out, dynamic_shared, dynamic_shared_address, sync_threads, thread_idx,
};
use gpu_kernels::probe;

/// One thread walks two barriers through their phases, recording `try_wait` as it goes.
fn mbarrier_walk(src: In<u32>, rec: Out<u32>, landed: Out<u32>) {
    let base = dynamic_shared_address();
    let (bar, tx) = (Mbarrier(base), Mbarrier(base + 8));
    let mut n = 0;
    let mut log = |v: bool| {
        rec.set(n, v as u32);
        n += 1;
    };
    bar.init(2);
    log(bar.try_wait(0)); // 0: phase 0 incomplete
    log(bar.try_wait(1)); // 1: "the phase before 0" counts as complete
    bar.arrive();
    log(bar.try_wait(0)); // 0: one arrival of two
    bar.arrive();
    log(bar.try_wait(0)); // 1: phase 0 complete
    log(bar.try_wait(1)); // 0: phase 1 incomplete
    bar.arrive();
    bar.arrive();
    log(bar.try_wait(0)); // 0: phase 2 (parity 0) incomplete
    log(bar.try_wait(1)); // 1: phase 1 complete
    // Bytes announced, then landed.
    tx.init(1);
    tx.arrive_expect_tx(64);
    log(tx.try_wait(0)); // 0: arrived, 64 bytes outstanding
    bulk_load(base + 256, src, 64, tx);
    log(tx.try_wait(0)); // 1
    // Bytes landed before they are announced (the count goes negative).
    bulk_load(base + 512, src.offset(16), 32, tx);
    log(tx.try_wait(1)); // 0: 32 bytes landed, nobody arrived
    tx.arrive_expect_tx(32);
    log(tx.try_wait(1)); // 1
    tx.wait(1);
    let words = dynamic_shared::<u32>(256);
    for i in 0..16 {
        landed.set(i, words.load(64 + i));
    }
    for i in 0..8 {
        landed.set(16 + i, words.load(128 + i));
    }
}

#[test]
fn mbarrier_phases_parity_and_transaction_bytes() {
    let src = Aligned::new(&(0..32).map(|i| 1000 + i).collect::<Vec<u32>>());
    let mut rec = vec![9u32; 11];
    let mut landed = vec![0u32; 24];
    let (s, r, l) = (
        In::from_slice(src.get()),
        Out::from_slice(&mut rec),
        Out::from_slice(&mut landed),
    );
    emu::launch(cfg((1, 1), 1, 1024), || mbarrier_walk(s, r, l)).unwrap();
    assert_eq!(rec, [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1]);
    let want: Vec<u32> = (1000..1016).chain(1016..1024).collect();
    assert_eq!(landed, want);
}

#[test]
fn probe_mbarrier_completes_when_every_thread_arrives() {
    for threads in [32, 96, 256] {
        let mut out = vec![0u32; 1];
        let o = Out::from_slice(&mut out);
        emu::launch(cfg((2, 1), threads, probe::PROBE_SHARED_BYTES), || {
            probe::probe_mbarrier(o)
        })
        .unwrap();
        assert_eq!(out, [1], "{threads} threads");
    }
}

/// Misuse of a barrier, by case.
fn mbarrier_misuse(src: In<u32>, case: u32) {
    let base = dynamic_shared_address();
    let bar = Mbarrier(base);
    let t = thread_idx().x;
    match case {
        // Waiting on a barrier nobody initialised.
        0 => Mbarrier(base + 64).wait(0),
        // An extra arrival: the only expected one has come, the phase waits for bytes.
        1 => {
            if t == 0 {
                bar.init(1);
                fence_mbarrier_init();
            }
            sync_threads();
            if t == 0 {
                bar.arrive_expect_tx(64);
            }
            sync_threads();
            if t == 1 {
                bar.arrive();
            }
        }
        // Bytes announced that no copy delivers (nobody waits, so the block ends).
        2 => {
            if t == 0 {
                bar.init(1);
                bar.arrive_expect_tx(48);
            }
        }
        // Bytes landed that nobody announced.
        3 => {
            if t == 0 {
                bar.init(1);
                bulk_load(base + 128, src, 64, bar);
                bar.arrive();
            }
        }
        // Re-initialised with an arrival pending.
        4 => {
            if t == 0 {
                bar.init(2);
                bar.arrive();
                bar.init(2);
            }
        }
        // A wait that nothing will satisfy.
        5 => {
            if t == 0 {
                bar.init(2);
                bar.arrive();
            }
            sync_threads();
            bar.wait(0);
        }
        _ => unreachable!(),
    }
}

#[test]
fn mbarrier_misuse_is_reported_with_block_and_thread() {
    let src = Aligned::new(&[7u32; 64]);
    let s = In::from_slice(src.get());
    let run = |case: u32, grid: u32| {
        expect_err(emu::launch(cfg((grid, 1), 64, 1024), || {
            mbarrier_misuse(s, case)
        }))
    };
    assert_eq!(
        run(0, 1),
        "block (0, 0, 0) thread (0, 0, 0): mbarrier.try_wait.parity on shared address 0x40, which \
         no mbarrier.init has initialised (in this block)"
    );
    assert_eq!(
        run(1, 1),
        "block (0, 0, 0) thread (1, 0, 0): mbarrier.arrive on the mbarrier at 0x0: more arrivals \
         than the 1 expected in phase 0 (all have arrived; the phase waits on 64 transaction \
         bytes announced but not landed)"
    );
    assert_eq!(
        run(2, 1),
        "block (0, 0, 0): the mbarrier at 0x0 ended with 48 transaction bytes announced (by thread \
         (0, 0, 0)) in phase 0 that never landed: no copy delivered them"
    );
    assert_eq!(
        run(3, 1),
        "block (0, 0, 0): the mbarrier at 0x0 ended with 64 bytes landed in phase 0 that no \
         arrive.expect_tx announced"
    );
    assert_eq!(
        run(4, 1),
        "block (0, 0, 0) thread (0, 0, 0): mbarrier.init at 0x0 re-initialises a barrier with work \
         pending (phase 0: 1 of 2 arrivals pending, no transaction bytes outstanding); wait for \
         the phase to complete (or mbarrier.inval) first"
    );
    // Odd blocks run their threads in reverse order; the report is the same.
    assert_eq!(
        run(5, 2),
        "block (0, 0, 0): deadlock: mbarrier.try_wait.parity polled in vain by 64 of 64 live \
         threads; 64 threads wait on the mbarrier at 0x0 (phase 0: 1 of 2 arrivals pending, no \
         transaction bytes outstanding)"
    );
}
