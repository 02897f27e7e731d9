//! Launch wrappers of the thread-block cluster probes (kernels: the `cluster = 2` kernels at the
//! end of gpu-kernels/src/probe.rs), for tests only (`tests/kernels_cluster.rs`): they let the
//! probes run through kiln's real launch path on either backend, so `KILN_TEST_DEVICE=cuda`
//! checks clusters on the GPU (the cluster registers, `cluster_sync`, remote arrivals, multicast
//! TMA) before a GEMM depends on them. Nothing in the pipeline calls them.
//!
//! The wrappers check every buffer against what the probe touches; the number of blocks is
//! passed through unchanged, so a grid that is not whole clusters is refused by the launcher
//! (`launch.rs`), on both backends, before anything runs. Tensor maps are kiln's bf16 maps
//! ([`TmaMatrix`]: 64-column boxes with the 128-byte swizzle, as the GEMMs load them).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, TMA_BOX, TmaMatrix, ensure_shape};
use gpu_kernels::probe::{
    PROBE_SHARED_BYTES, RING_SHARED_BYTES, probe_cluster_ids, probe_cluster_ring,
    probe_tma_multicast,
};

/// Blocks per cluster of the probes (`kernel! { cluster = 2 }`): clusters are `CLUSTER`
/// consecutive blocks along x, block `b` is rank `b % CLUSTER` of its cluster.
pub const CLUSTER: u32 = match probe_cluster_ids::ENTRY.cluster {
    Some(c) => c,
    None => panic!("probe_cluster_ids declares a cluster size"),
};

/// Threads per block the kernel was built for (`kernel! { threads = N }`).
const fn threads(entry: &gpu_kernels::device::entry::Entry) -> u32 {
    match entry.threads {
        Some(t) => t,
        None => panic!("the cluster probes declare their block size"),
    }
}

/// Rows of the ring probe's tiles: an A tile (one block's, per step) and each half of the B
/// tile (one per block rank, per step) are 8 rows of 64 bf16, 1024 bytes.
pub const RING_TILE_ROWS: usize = 8;

/// `out[3·b..3·b + 3]` = block `b`'s cluster rank, the cluster size, and 1 once a barrier that
/// every block of its cluster arrived on remotely completed, for `blocks` blocks (launches the
/// grid as given: one that is not a multiple of [`CLUSTER`] is refused by the launcher).
pub fn cluster_ids(dev: &Device, out: &Buffer<u32>, blocks: usize) -> Result<()> {
    const K: &str = "probe_cluster_ids";
    ensure_shape!(blocks > 0, K, "no blocks");
    let grid = to_u32(K, "blocks", blocks)?;
    check_len(K, "out", out, 3 * blocks)?;
    let cfg = LaunchConfig::linear(grid, threads(&probe_cluster_ids::ENTRY))
        .with_shared(PROBE_SHARED_BYTES);
    probe_cluster_ids::launch(dev, cfg, out.output())
}

/// Where [`tma_multicast`] loads its box, and how many blocks load it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulticastBox {
    /// Blocks of the launch (a multiple of [`CLUSTER`] for the launch to be accepted).
    pub blocks: usize,
    /// Column and row of the box's first element (inside the matrix; the box may hang over
    /// its right and bottom edges, where TMA fills zeros).
    pub x: usize,
    pub y: usize,
}

/// Words of `out` per block of [`tma_multicast`] over `src`: its box (64 × `box_rows` bf16).
pub fn multicast_box_words(src: &TmaMatrix) -> usize {
    TMA_BOX.0 as usize * src.box_rows() as usize / 2
}

/// Block rank 0 of each cluster loads `src`'s box at (`x`, `y`) into the shared memory of every
/// block of its cluster with one multicast TMA; each block copies its shared bytes, as TMA laid
/// them out there (swizzled), to `out[block][multicast_box_words(src)]`.
pub fn tma_multicast(
    dev: &Device,
    src: &TmaMatrix,
    out: &Buffer<u32>,
    shape: MulticastBox,
) -> Result<()> {
    const K: &str = "probe_tma_multicast";
    let MulticastBox { blocks, x, y } = shape;
    ensure_shape!(blocks > 0, K, "no blocks");
    ensure_shape!(
        x < src.cols() && y < src.rows(),
        K,
        "box at ({x}, {y}) starts outside the {} × {} source",
        src.rows(),
        src.cols()
    );
    // At most 64 × 256 bf16 (`tma_matrix_boxed`): 32 KiB, the probe's box slot.
    let words = multicast_box_words(src);
    check_len(K, "out", out, blocks * words)?;
    let grid = to_u32(K, "blocks", blocks)?;
    let (x, y) = (to_u32(K, "x", x)?, to_u32(K, "y", y)?);
    let cfg = LaunchConfig::linear(grid, threads(&probe_tma_multicast::ENTRY))
        .with_shared(PROBE_SHARED_BYTES);
    let bytes = (words * 4) as u32;
    probe_tma_multicast::launch(dev, cfg, src.map(), out.output(), x, y, bytes)
}

/// The launch of [`cluster_ring`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingShape {
    /// Blocks of the launch (a multiple of [`CLUSTER`] for the launch to be accepted).
    pub blocks: usize,
    /// Steps of the ring (each one A tile per block and one B tile per cluster; the ring has
    /// two slots, so `k_tiles > 2` wraps it).
    pub k_tiles: usize,
    /// Rounds block rank 1's consumers hold back before each step (`probe::dawdle`: on the GPU
    /// ~1000 cycles a round).
    pub slow: u32,
}

/// The cluster ring probe (`probe_cluster_ring`): per block `b`, 128 words
/// `out[128·b..128·b + 128]` folded over `k_tiles` steps from A tiles of its own (`a`: rows
/// `(b·k_tiles + i)·8..+8` at step `i`) and a B tile shared by the cluster (`b`: rows
/// `16·i..16·i + 16`, half `r` loaded by block rank `r` into both blocks by multicast). `a` and
/// `b` are 64-column bf16 matrices read in boxes of [`RING_TILE_ROWS`] rows
/// (`Device::tma_matrix_boxed`); the probe reads each 1024-byte tile as 256 words as TMA laid
/// it out (swizzled).
pub fn cluster_ring(
    dev: &Device,
    a: &TmaMatrix,
    b: &TmaMatrix,
    out: &Buffer<u32>,
    shape: RingShape,
) -> Result<()> {
    const K: &str = "probe_cluster_ring";
    let RingShape {
        blocks,
        k_tiles,
        slow,
    } = shape;
    ensure_shape!(blocks > 0, K, "no blocks");
    let tile = RING_TILE_ROWS as u32;
    for (name, m) in [("a", a), ("b", b)] {
        ensure_shape!(
            m.box_rows() == tile,
            K,
            "{name} is read in boxes of {} rows, the probe's tiles are {tile}",
            m.box_rows()
        );
    }
    a.check(K, "a", blocks * k_tiles * RING_TILE_ROWS, 64)?;
    // Per step, one 8-row half of B for each of the cluster's two blocks.
    b.check(K, "b", k_tiles * 2 * RING_TILE_ROWS, 64)?;
    check_len(K, "out", out, blocks * 128)?;
    let grid = to_u32(K, "blocks", blocks)?;
    // The probe computes A rows as u32 (block · k_tiles + i) · 8.
    to_u32(K, "rows of a", blocks * k_tiles * RING_TILE_ROWS)?;
    let cfg = LaunchConfig::linear(grid, threads(&probe_cluster_ring::ENTRY))
        .with_shared(RING_SHARED_BYTES);
    let (out, k) = (out.output(), k_tiles as u32);
    probe_cluster_ring::launch(dev, cfg, a.map(), b.map(), out, k, slow)
}
