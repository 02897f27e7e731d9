//! Safe launch wrappers, one file per kernel family, named like the kernel file:
//! `ops/NAME.rs` wraps `gpu-kernels/src/NAME.rs` and is tested by `tests/kernels_NAME.rs`
//! (one exception: `probe_cluster.rs` wraps the cluster probes of `probe.rs` for
//! `tests/kernels_cluster.rs` only).
//! Every `ops/*.rs` is a public module here (declared by build.rs: no list to keep).
//!
//! On the GPU, indexing is unchecked: a wrapper checks every length against its shape (a
//! struct per family, e.g. `gemm::GemmShape`, that validates itself) before it launches.

include!(concat!(env!("OUT_DIR"), "/ops_modules.rs"));

use super::{Buffer, Device, Element, GpuError, LaunchConfig, Result};

/// Fails unless `buf` holds at least `needed` elements.
pub(crate) fn check_len<T: Element>(
    kernel: &'static str,
    name: &str,
    buf: &Buffer<T>,
    needed: usize,
) -> Result<()> {
    if buf.len() < needed {
        return Err(GpuError::Shape {
            kernel,
            message: format!("{name} has {} elements, needs {needed}", buf.len()),
        });
    }
    Ok(())
}

/// Converts a size to the u32 the kernels index with, or fails naming it.
pub(crate) fn to_u32(kernel: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| GpuError::Shape {
        kernel,
        message: format!("{what} = {v} does not fit the kernel's 32-bit index"),
    })
}

/// A persistent launch over `tiles` tiles (the kernel walks tiles `b`, `b + grid`, …): a block
/// of `threads` per multiprocessor, at most one per tile, with `shared` bytes of dynamic shared
/// memory. Fails when the tile count does not fit the kernel's 32-bit index.
pub(crate) fn persistent(
    dev: &Device,
    kernel: &'static str,
    tiles: usize,
    threads: u32,
    shared: u32,
) -> Result<LaunchConfig> {
    to_u32(kernel, "tiles", tiles)?;
    let blocks = tiles.min(dev.multiprocessors() as usize) as u32;
    Ok(LaunchConfig::linear(blocks, threads).with_shared(shared))
}

/// Whether `TileWidth::Auto` runs the dense GEMMs' wide tiles in cluster pairs sharing B
/// (`gemm_wgmma`'s `*_wide_pair` kernels): unset, for launches of at least
/// `gemm_wgmma::PAIRED_MIN_TILES` wide tiles ([`GemmPairs::Large`]); `0` never; `1` for every
/// wide launch. Every tiling gives the same bits; explicit tilings ignore it.
pub const GEMM_PAIRS_VAR: &str = "KILN_GEMM_PAIRS";

/// What [`GEMM_PAIRS_VAR`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPairs {
    /// Unset (or anything but 0 and 1): pairs for large launches only.
    Large,
    Never,
    Always,
}

/// [`GEMM_PAIRS_VAR`]'s choice (read once per process).
pub fn gemm_pairs() -> GemmPairs {
    static PAIRS: std::sync::OnceLock<GemmPairs> = std::sync::OnceLock::new();
    *PAIRS.get_or_init(
        || match std::env::var(GEMM_PAIRS_VAR).as_deref().map(str::trim) {
            Ok("0") => GemmPairs::Never,
            Ok("1") => GemmPairs::Always,
            _ => GemmPairs::Large,
        },
    )
}

/// [`persistent`] for a kernel declared for clusters of two that walks its tiles in pairs
/// (tiles `2p`, `2p + 1` to one cluster): as many clusters as the driver says fit at once
/// ([`Device::max_active_clusters`], an error where none fits), at most one per two
/// multiprocessors and one per pair of tiles.
pub(crate) fn persistent_pairs(
    dev: &Device,
    kernel: &'static str,
    tiles: usize,
    threads: u32,
    shared: u32,
) -> Result<LaunchConfig> {
    to_u32(kernel, "tiles", tiles.next_multiple_of(2))?;
    let probe = LaunchConfig::linear(2, threads).with_shared(shared);
    let fit = dev.max_active_clusters(kernel, probe)? as usize;
    let half = (dev.multiprocessors() / 2).max(1) as usize;
    let clusters = tiles.div_ceil(2).min(fit).min(half).max(1) as u32;
    Ok(LaunchConfig::linear(2 * clusters, threads).with_shared(shared))
}
