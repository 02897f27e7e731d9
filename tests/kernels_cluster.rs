//! Thread-block clusters through kiln's real launch path (`kiln::gpu::ops::probe_cluster`, the
//! wrappers of the `cluster = 2` probes in gpu-kernels/src/probe.rs): on the emulator by
//! default, on the GPU with `KILN_TEST_DEVICE=cuda|all` (where they are the first code to run
//! cluster launches, `%cluster_ctarank`, `barrier.cluster`, `mapa`, remote `mbarrier.arrive`
//! and multicast TMA). Checks:
//! - every block's cluster rank (`b % 2`) and the cluster size (2), and that a barrier each
//!   block's thread 0 arrived on remotely in every block of its cluster completed, on grids of
//!   2 and 6 blocks;
//! - a box loaded once per cluster by multicast TMA lands in both blocks of every cluster,
//!   byte for byte as TMA lays it out (the 128-byte swizzle the GEMMs use, zero fill past the
//!   source's edges), against `expected_box` (written from the CUDA description);
//! - a two-block ring sharing one operand by multicast, with remote releases, over one step,
//!   one pass and several wraps of its two slots, in step and with block rank 1's consumers
//!   holding back (`slow`), against the reference fold of its description;
//! - host-side misuse: a grid that is not whole clusters is refused by the launcher with an
//!   error naming the kernel, and short buffers or wrong boxes by the wrappers; nothing is
//!   launched (`launch_count`, outputs still poisoned).
//!
//! Device-side misuse (deadlocks, ranks beyond the cluster, arrivals on exited blocks) would
//! hang or trap a GPU: those cases stay in the emulator's self-test, `emulator_cluster.rs`.
//!
//! Inputs are fresh random data per run (`common::rng`), outputs start poisoned with a tail
//! that must stay poisoned.

mod common;
mod emu_common;

use common::*;
use emu_common::hopper::{expected_box, ring_reference};
use kiln::gpu::ops::probe_cluster::{
    CLUSTER, MulticastBox, RING_TILE_ROWS, RingShape, cluster_ids, cluster_ring,
    multicast_box_words, tma_multicast,
};
use kiln::gpu::{Device, TmaMatrix};

const POISON: u32 = 0xdead_beef;
/// Words past each output that must stay poisoned.
const TAIL: usize = 7;

/// Random bf16 bits (any pattern: the probes only move bytes).
fn random_bits(r: &mut kiln::rng::Rng, n: usize) -> Vec<u16> {
    (0..n).map(|_| r.next_u64() as u16).collect()
}

/// `bits` (`rows × cols`) uploaded with a tensor map of `64 × box_rows` boxes.
fn matrix(dev: &Device, bits: &[u16], rows: usize, cols: usize, box_rows: u32) -> TmaMatrix {
    dev.tma_matrix_boxed(upload(dev, bits), rows, cols, box_rows)
        .expect("making a test tensor map")
}

/// `out`'s first `want.len()` words are `want` and the rest still [`POISON`].
fn check_out(got: &[u32], want: &[u32], what: &str) {
    assert_same(&got[..want.len()], want, what);
    assert!(
        got[want.len()..].iter().all(|&w| w == POISON),
        "{what}: written past the output"
    );
}

#[test]
fn every_block_knows_its_cluster_rank_and_size() {
    assert_eq!(CLUSTER, 2);
    for dev in devices() {
        for blocks in [2usize, 6] {
            let what = format!("{blocks} blocks on {}", dev.name());
            let out = poisoned(&dev, 3 * blocks + TAIL, POISON);
            cluster_ids(&dev, &out, blocks).unwrap_or_else(|e| panic!("{what}: {e}"));
            let want: Vec<u32> = (0..blocks as u32).flat_map(|b| [b % 2, 2, 1]).collect();
            check_out(&out.to_vec().unwrap(), &want, &what);
        }
    }
}

#[test]
fn a_multicast_box_lands_in_every_block_of_each_cluster() {
    let (rows, cols) = (90usize, 136usize);
    for dev in devices() {
        let mut r = rng(21);
        let bits = random_bits(&mut r, rows * cols);
        // (x, y, box rows, blocks): the GEMMs' 64 × 64 box inside; one hanging over the
        // right and bottom edges; kiln's default 64 × 128 box (over the bottom); the largest
        // box (32 KiB); on 2, 4 and 6 blocks.
        let cases = [
            (64usize, 8usize, 64u32, 4usize),
            (96, 70, 32, 2),
            (0, 0, 128, 6),
            (8, 3, 256, 2),
        ];
        for (x, y, box_rows, blocks) in cases {
            let what = format!(
                "box 64 × {box_rows} at ({x}, {y}), {blocks} blocks on {}",
                dev.name()
            );
            let src = matrix(&dev, &bits, rows, cols, box_rows);
            let words = multicast_box_words(&src);
            assert_eq!(words, 32 * box_rows as usize);
            let out = poisoned(&dev, blocks * words + TAIL, POISON);
            tma_multicast(&dev, &src, &out, MulticastBox { blocks, x, y })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let one = expected_box(
                &bits,
                cols,
                rows,
                x as i64,
                y as i64,
                64,
                box_rows as usize,
                true,
            );
            let want: Vec<u32> = (0..blocks).flat_map(|_| one.iter().copied()).collect();
            check_out(&out.to_vec().unwrap(), &want, &what);
        }
    }
}

/// The word of a 1024-byte tile (8 rows of 128 bytes) that TMA's 128-byte swizzle stores at
/// word `w` of shared memory: 16-byte chunk `c` of row `r` holds chunk `c ^ (r % 8)` of the
/// row.
fn swizzled(w: usize) -> usize {
    let (r, c, e) = (w / 32, (w % 32) / 4, w % 4);
    r * 32 + 4 * (c ^ (r % 8)) + e
}

/// `words` as the bf16 bits of a 64-column matrix (little-endian halves).
fn as_bf16(words: &[u32]) -> Vec<u16> {
    words
        .iter()
        .flat_map(|w| [*w as u16, (*w >> 16) as u16])
        .collect()
}

#[test]
fn a_ring_shared_across_a_cluster_refills_a_slot_only_when_both_blocks_released_it() {
    for dev in devices() {
        let mut r = rng(22);
        // (blocks, steps, slow): one step (no wrap), one pass over both slots, several wraps
        // on two clusters, and block rank 1's consumers holding back (on the GPU `slow`
        // rounds of ~1000 cycles before each step: far longer than a TMA load, so a producer
        // that refilled a slot its peer had yet to read would overwrite it).
        let cases = [
            (2usize, 1usize, 0u32),
            (2, 2, 0),
            (4, 7, 0),
            (2, 7, 20),
            (4, 5, 3),
            (6, 9, 8),
        ];
        for (blocks, k_tiles, slow) in cases {
            let what = format!(
                "{blocks} blocks, {k_tiles} steps, slow {slow} on {}",
                dev.name()
            );
            let a: Vec<u32> = (0..blocks * k_tiles * 256)
                .map(|_| r.next_u64() as u32)
                .collect();
            let b: Vec<u32> = (0..k_tiles * 512).map(|_| r.next_u64() as u32).collect();
            let tile = RING_TILE_ROWS as u32;
            let ma = matrix(&dev, &as_bf16(&a), blocks * k_tiles * 8, 64, tile);
            let mb = matrix(&dev, &as_bf16(&b), k_tiles * 16, 64, tile);
            let out = poisoned(&dev, blocks * 128 + TAIL, POISON);
            let shape = RingShape {
                blocks,
                k_tiles,
                slow,
            };
            cluster_ring(&dev, &ma, &mb, &out, shape).unwrap_or_else(|e| panic!("{what}: {e}"));
            check_out(
                &out.to_vec().unwrap(),
                &ring_reference(
                    // Each tile as TMA laid it out: 128B-swizzled, B in two halves.
                    |tile, w| a[tile * 256 + swizzled(w)],
                    |i, w| b[i * 512 + (w / 256) * 256 + swizzled(w % 256)],
                    blocks,
                    k_tiles,
                ),
                &what,
            );
        }
    }
}

/// Runs `launch` (which must fail) on `dev` and returns its message, after checking that it
/// launched nothing and left `out` poisoned.
fn refused(
    dev: &Device,
    out: &kiln::gpu::Buffer<u32>,
    launch: impl FnOnce() -> kiln::gpu::Result<()>,
) -> String {
    let before = dev.launch_count();
    let msg = match launch() {
        Ok(()) => panic!("a launch that must be refused ran on {}", dev.name()),
        Err(e) => e.to_string(),
    };
    assert_eq!(dev.launch_count(), before, "{msg}: launched");
    dev.synchronize().unwrap();
    assert!(
        out.to_vec().unwrap().iter().all(|&w| w == POISON),
        "{msg}: output written"
    );
    msg
}

#[test]
fn grids_that_are_not_whole_clusters_and_bad_shapes_are_refused_before_launch() {
    for dev in devices() {
        let on = dev.name();
        let whole = |kernel: &str, msg: &str| {
            assert!(
                msg.starts_with(&format!("kernel {kernel}: "))
                    && msg.contains("grid x must be a multiple of 2"),
                "{msg} on {on}"
            );
        };
        let out = poisoned(&dev, 3 * 6, POISON);
        for blocks in [1usize, 3, 5] {
            whole(
                "probe_cluster_ids",
                &refused(&dev, &out, || cluster_ids(&dev, &out, blocks)),
            );
        }
        let msg = refused(&dev, &out, || cluster_ids(&dev, &out, 0));
        assert_eq!(msg, "kernel probe_cluster_ids: no blocks", "on {on}");
        let msg = refused(&dev, &out, || cluster_ids(&dev, &out, 8));
        assert_eq!(
            msg, "kernel probe_cluster_ids: out has 18 elements, needs 24",
            "on {on}"
        );

        let mut r = rng(23);
        let (rows, cols) = (40usize, 64usize);
        let src = matrix(&dev, &random_bits(&mut r, rows * cols), rows, cols, 16);
        let words = multicast_box_words(&src);
        let out = poisoned(&dev, 4 * words, POISON);
        let mc = |blocks, x, y| tma_multicast(&dev, &src, &out, MulticastBox { blocks, x, y });
        whole("probe_tma_multicast", &refused(&dev, &out, || mc(3, 0, 0)));
        let msg = refused(&dev, &out, || mc(6, 0, 0));
        assert_eq!(
            msg,
            format!(
                "kernel probe_tma_multicast: out has {} elements, needs {}",
                4 * words,
                6 * words
            ),
            "on {on}"
        );
        let msg = refused(&dev, &out, || mc(2, 64, 0));
        assert!(
            msg.contains("starts outside the 40 × 64 source"),
            "{msg} on {on}"
        );

        // The ring: its tiles are 8-row boxes; A needs blocks · k_tiles · 8 rows, B 16 a step.
        let (blocks, k_tiles) = (2usize, 3usize);
        let a = random_bits(&mut r, blocks * k_tiles * 8 * 64);
        let b = random_bits(&mut r, k_tiles * 16 * 64);
        let ma = matrix(&dev, &a, blocks * k_tiles * 8, 64, 8);
        let mb = matrix(&dev, &b, k_tiles * 16, 64, 8);
        let out = poisoned(&dev, 4 * 128, POISON);
        let ring = |a: &TmaMatrix, b: &TmaMatrix, blocks, k_tiles| {
            let shape = RingShape {
                blocks,
                k_tiles,
                slow: 0,
            };
            cluster_ring(&dev, a, b, &out, shape)
        };
        whole(
            "probe_cluster_ring",
            &refused(&dev, &out, || ring(&ma, &mb, 1, 3)),
        );
        let msg = refused(&dev, &out, || ring(&ma, &mb, 2, 4));
        assert_eq!(
            msg, "kernel probe_cluster_ring: a is 48 × 64, needs 64 columns and at least 64 rows",
            "on {on}"
        );
        let msg = refused(&dev, &out, || ring(&ma, &mb, 6, 1));
        assert_eq!(
            msg, "kernel probe_cluster_ring: out has 512 elements, needs 768",
            "on {on}"
        );
        let wide = matrix(&dev, &b, k_tiles * 16, 64, 16);
        let msg = refused(&dev, &out, || ring(&ma, &wide, 2, 3));
        assert_eq!(
            msg,
            "kernel probe_cluster_ring: b is read in boxes of 16 rows, the probe's tiles are 8",
            "on {on}"
        );
    }
}

/// The GEMMs' paired kernels start as many clusters as the driver says fit at once: on a GPU
/// that is at least one and no more than one per two multiprocessors (the query makes the
/// context current on the calling thread: a test's thread may have made no driver call yet);
/// the emulator reports its multiprocessors over the cluster size.
#[test]
fn the_driver_says_how_many_gemm_clusters_fit() {
    for dev in devices() {
        for kernel in [
            "gemm_wgmma_f32_wide_pair",
            "gemm_wgmma_bf16_wide_pair",
            "gemm_wgmma_swiglu_wide_pair",
        ] {
            let cfg = kiln::gpu::LaunchConfig::linear(2, gpu_kernels::gemm_wgmma::THREADS)
                .with_shared(gpu_kernels::gemm_wgmma::WIDE_SHARED_BYTES);
            let fit = dev
                .max_active_clusters(kernel, cfg)
                .expect("occupancy query");
            println!("{}: {kernel}: {fit} clusters of 2 fit", dev.name());
            assert!(
                (1..=dev.multiprocessors() / 2).contains(&fit),
                "{kernel}: {fit} clusters on {} multiprocessors",
                dev.multiprocessors()
            );
            // Asked again (cached): the same answer.
            assert_eq!(
                dev.max_active_clusters(kernel, cfg).unwrap(),
                fit,
                "{kernel}"
            );
        }
    }
}
