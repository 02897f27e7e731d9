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
