//! The emulator's thread-block clusters (`emu::launch_cluster`, `device::cluster`): the
//! cluster registers per block; a multicast TMA box landing in both blocks of a cluster, each
//! waiting on its own barrier, against the layout written out independently
//! (`expected_box`), swizzled and packed; a producer/consumer ring across the two blocks, where
//! each block loads half of a shared operand by multicast and a slot is refilled only when
//! both blocks' consumers released it (remote arrivals), over several ring wraps; and misuse,
//! reported with the emulator's messages instead of a hang: a grid that is not whole
//! clusters, a `cluster_sync` one block never reaches, remote arrivals and multicast masks
//! beyond the cluster, an arrival on a block that has exited, a cluster address where a
//! block's own one is expected. Launches without clusters see a cluster of one.
//!
//! `kernels_cluster.rs` runs the same probes through kiln's launch path
//! (`kiln::gpu::ops::probe_cluster`) on the emulator and, with `KILN_TEST_DEVICE=cuda`, on the
//! GPU; the misuse cases here that fail on the device (deadlocks, bad ranks, exited blocks)
//! stay emulator-only: they would hang or trap a GPU.
//!
//! Inputs are fresh random data per run (`common::rng`), outputs start poisoned.
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod common;
mod emu_common;

use common::rng;
use emu_common::expect_err;
use emu_common::hopper::{Aligned, Bf16Tensor, cfg, expected_box, random_bf16, ring_reference};
use gpu_kernels::device::async_copy::{
    Mbarrier, Swizzle, TensorMap, fence_mbarrier_init, tma_load_2d_multicast,
};
use gpu_kernels::device::cluster::{
    cluster_ctarank, cluster_size, cluster_sync, map_shared_to_rank,
};
use gpu_kernels::device::emu;
use gpu_kernels::device::{In, Out, block_idx, dynamic_shared, dynamic_shared_address, thread_idx};
use gpu_kernels::probe;

const POISON: u32 = 0xdead_beef;

#[test]
fn every_block_knows_its_cluster_rank_and_size() {
    for blocks in [2u32, 6] {
        let mut out = vec![POISON; 3 * blocks as usize];
        let o = Out::from_slice(&mut out);
        emu::launch_cluster(cfg((blocks, 1), 128, probe::PROBE_SHARED_BYTES), 2, || {
            probe::probe_cluster_ids(o)
        })
        .unwrap();
        let want: Vec<u32> = (0..blocks).flat_map(|b| [b % 2, 2, 1]).collect();
        assert_eq!(out, want, "{blocks} blocks");
    }
    // Without clusters every block is a cluster of one: rank 0 of 1, `cluster_sync` a block
    // barrier, `mapa` to rank 0 the block itself.
    let mut out = vec![POISON; 3 * 3 * 64];
    let o = Out::from_slice(&mut out);
    emu::launch(cfg((3, 1), 64, 256), || {
        let words = dynamic_shared::<u32>(64);
        let t = thread_idx().x as usize;
        words.store(t, t as u32 + 1);
        cluster_sync();
        let peer = words.load(63 - t);
        let at = 3 * (block_idx().x as usize * 64 + t);
        o.set(at, cluster_ctarank());
        o.set(at + 1, cluster_size());
        o.set(at + 2, peer + u32::from(map_shared_to_rank(0, 0) != 0));
    })
    .unwrap();
    let want: Vec<u32> = (0..3 * 64).flat_map(|i| [0, 1, 64 - i % 64 + 1]).collect();
    assert_eq!(out, want);
}

#[test]
fn a_multicast_box_lands_in_every_block_of_the_mask() {
    let mut r = rng(11);
    let (cols, rows) = (136usize, 90usize);
    let (bits, _) = random_bf16(&mut r, cols * rows, 1.0);
    let t = Bf16Tensor::new(&bits);
    // (x, y, box cols, box rows, swizzle): the GEMMs' 64 × 64 swizzled box inside, one hanging
    // over the bottom-right corner, packed rows.
    let cases: [(i32, i32, u32, u32, bool); 3] = [
        (64, 8, 64, 64, true),
        (96, 70, 64, 32, true),
        (8, 3, 24, 16, false),
    ];
    for (x, y, bc, br, swizzled) in cases {
        let swizzle = if swizzled {
            Swizzle::B128
        } else {
            Swizzle::None
        };
        let maps = [t.map_swizzled(0, (cols as u64, rows as u64), (bc, br), swizzle)];
        let m = In::from_slice(&maps);
        let box_bytes = bc * br * 2;
        let words = (box_bytes / 4) as usize;
        let blocks = 4u32;
        let mut out = vec![POISON; blocks as usize * words];
        let o = Out::from_slice(&mut out);
        emu::launch_cluster(cfg((blocks, 1), 128, probe::PROBE_SHARED_BYTES), 2, || {
            probe::probe_tma_multicast(m, o, x as u32, y as u32, box_bytes)
        })
        .unwrap();
        let want = expected_box(
            t.bits(),
            cols,
            rows,
            x as i64,
            y as i64,
            bc as usize,
            br as usize,
            swizzled,
        );
        for (b, got) in out.chunks(words).enumerate() {
            assert_eq!(got, want, "block {b}: box {bc} × {br} at ({x}, {y})");
        }
    }
}

/// A `rows × 32` tensor of `u32` for TMA (rows of 128 bytes, packed boxes of 32 × 8 rows).
fn u32_map(t: &Aligned<u32>, rows: u64, box_rows: u32) -> TensorMap {
    TensorMap::emulated_2d(
        t.get().as_ptr() as u64,
        4,
        32,
        rows,
        128,
        32,
        box_rows,
        Swizzle::None,
    )
    .with_extent(4 * t.get().len() as u64)
}

#[test]
fn a_ring_shared_across_a_cluster_refills_a_slot_only_when_both_blocks_released_it() {
    let mut r = rng(12);
    // 1 step (no wrap), 2 (each slot once), 7 (three wraps and a half); block rank 1's
    // consumers in step with the others, or holding back (a ring whose producers waited only
    // for their own block's consumers gets wrong results then: checked by hand).
    for (blocks, k_tiles, slow) in [
        (2usize, 1usize, 0),
        (2, 2, 0),
        (4, 7, 0),
        (2, 7, 20),
        (4, 5, 3),
    ] {
        let a: Vec<u32> = (0..blocks * k_tiles * 256)
            .map(|_| r.next_u64() as u32)
            .collect();
        let b: Vec<u32> = (0..k_tiles * 512).map(|_| r.next_u64() as u32).collect();
        let (ta, tb) = (Aligned::new(&a), Aligned::new(&b));
        let maps = [
            u32_map(&ta, (blocks * k_tiles * 8) as u64, 8),
            u32_map(&tb, (k_tiles * 16) as u64, 8),
        ];
        let (ma, mb) = (In::from_slice(&maps[..1]), In::from_slice(&maps[1..]));
        let mut out = vec![POISON; blocks * 128];
        let o = Out::from_slice(&mut out);
        emu::launch_cluster(
            cfg((blocks as u32, 1), 256, probe::RING_SHARED_BYTES),
            2,
            || probe::probe_cluster_ring(ma, mb, o, k_tiles as u32, slow),
        )
        .unwrap();
        assert!(
            out == ring_reference(
                |tile, w| a[tile * 256 + w],
                |i, w| b[i * 512 + w],
                blocks,
                k_tiles
            ),
            "{blocks} blocks, {k_tiles} steps, slow {slow}"
        );
    }
}

#[test]
fn a_grid_that_is_not_whole_clusters_is_refused() {
    let mut out = vec![POISON; 9];
    let o = Out::from_slice(&mut out);
    let msg = expect_err(emu::launch_cluster(
        cfg((3, 1), 128, probe::PROBE_SHARED_BYTES),
        2,
        || probe::probe_cluster_ids(o),
    ));
    assert_eq!(
        msg,
        "grid Dim3 { x: 3, y: 1, z: 1 }: x (3) is not a multiple of the cluster size 2"
    );
    assert!(out.iter().all(|&w| w == POISON), "nothing ran");
    let msg = expect_err(emu::launch_cluster(cfg((32, 1), 32, 0), 32, || {}));
    assert_eq!(msg, "clusters of 32 blocks: the emulator runs 1..=16");
}

/// A barrier at shared address 0 that every thread of the cluster sees initialised (one
/// arrival expected).
fn cluster_barrier() -> Mbarrier {
    let bar = Mbarrier(dynamic_shared_address());
    if thread_idx().x == 0 {
        bar.init(1);
        fence_mbarrier_init();
    }
    cluster_sync();
    bar
}

#[test]
fn a_cluster_sync_one_block_never_reaches_is_a_deadlock_naming_both_blocks() {
    let msg = expect_err(emu::launch_cluster(cfg((2, 1), 64, 64), 2, || {
        let bar = cluster_barrier();
        if cluster_ctarank() == 1 {
            // Waits for an arrival nobody makes, instead of meeting block 0.
            bar.wait(0);
        }
        cluster_sync();
    }));
    assert_eq!(
        msg,
        "cluster of blocks block (0, 0, 0)..=block (1, 0, 0): deadlock: cluster_sync reached by \
         64 of 128 live threads of the cluster; block (0, 0, 0) (rank 0, 64 live threads); \
         block (1, 0, 0) (rank 1, 64 live threads): mbarrier.try_wait.parity polled in vain by \
         64 of 64 live threads; 64 threads wait on the mbarrier at 0x0 (phase 0: 1 of 1 \
         arrivals pending, no transaction bytes outstanding)"
    );
}

#[test]
fn remote_operations_beyond_the_cluster_or_on_an_exited_block_are_reported() {
    let run = |case: u32| {
        expect_err(emu::launch_cluster(cfg((2, 1), 32, 2048), 2, move || {
            let bar = cluster_barrier();
            let base = dynamic_shared_address();
            if thread_idx().x != 0 || cluster_ctarank() != 0 {
                return;
            }
            match case {
                0 => bar.arrive_cluster(2),
                1 => {
                    map_shared_to_rank(base, 5);
                }
                2 => Mbarrier(map_shared_to_rank(bar.0, 1)).arrive(),
                3 => {
                    let maps = [TensorMap::emulated_2d(
                        0,
                        2,
                        64,
                        64,
                        128,
                        64,
                        8,
                        Swizzle::None,
                    )];
                    tma_load_2d_multicast(base + 1024, In::from_slice(&maps), 0, 0, bar, 0b101)
                }
                _ => {
                    // Every other thread is queued to run once, and returns: block 1 exits.
                    emu::yield_now();
                    bar.arrive_cluster(1)
                }
            }
        }))
    };
    let at = "block (0, 0, 0) thread (0, 0, 0): ";
    assert_eq!(
        run(0),
        format!(
            "{at}mbarrier.arrive.release.cluster.shared::cluster names block rank 2 of a cluster \
             of 2 block(s): no such block"
        )
    );
    assert_eq!(
        run(1),
        format!(
            "{at}mapa.shared::cluster to block rank 5 of a cluster of 2 block(s): no such block"
        )
    );
    assert_eq!(
        run(2),
        format!(
            "{at}mbarrier.arrive.shared::cta: 0x81000000 is a cluster-mapped address \
             (map_shared_to_rank); this operand takes the block's own shared address"
        )
    );
    assert_eq!(
        run(3),
        format!(
            "{at}cp.async.bulk.tensor.2d.multicast::cluster: the CTA mask 0b101 names block \
             ranks beyond the cluster of 2 block(s)"
        )
    );
    assert_eq!(
        run(4),
        format!(
            "{at}mbarrier.arrive.release.cluster.shared::cluster on the mbarrier at 0x0 of block \
             rank 1, whose threads have all exited: its shared memory is gone (cluster_sync \
             before a block exits)"
        )
    );
}
