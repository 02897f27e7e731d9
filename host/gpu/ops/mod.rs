//! Safe launch wrappers, one file per kernel family (mirroring gpu-kernels).

pub mod activation;
pub mod attention;
pub mod convert;
pub mod embedding;
pub mod gemm;
pub mod moe;
pub mod norm;
pub mod rope;

use super::{Buffer, Element, GpuError, Result};

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
