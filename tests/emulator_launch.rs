//! Self-tests of the CPU emulator (`gpu_kernels::device::emu`), launches: atomics from many
//! threads and blocks are atomic and sum correctly; every (block, thread) of a 3-D launch runs
//! exactly once and sees its indices, dimensions, lane and warp; launches the hardware refuses
//! (too many threads, too large a grid, an empty launch, too much dynamic or static plus
//! dynamic shared memory) are refused without running, and the limits themselves are allowed.
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod emu_common;

use emu_common::{cfg, expect_err, global_thread, linear};
use gpu_kernels::device::emu;
use gpu_kernels::device::{
    Out, Shared, atomic_add_f32, atomic_add_u32, block_dim, block_idx, dynamic_shared, grid_dim,
    lane_id, sync_threads, thread_idx, thread_rank, warp_id,
};
use gpu_kernels::shared_array;
use std::sync::atomic::{AtomicBool, Ordering};

// ---------------------------------------------------------------------------------------------
// Atomics from many threads and blocks.
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
// Thread and block indices over 3-D grids and blocks.
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
// Launches the hardware refuses are refused.
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
