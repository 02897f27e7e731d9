//! The PyTorch lab (scripts/lab/*.py) launches kiln's kernels from Python with the dynamic
//! shared-memory sizes written as literals; a kernel that grows its shared memory without the
//! lab following makes the lab's launches run past their allocation (seen on the H200: an
//! illegal address after flash attention went to three K/V slots). Keep them, and the block
//! sizes, equal here.

use gpu_kernels::{flash_attention, gemm_wgmma};

/// The number after `NAME = ` at the start of a line of `script`.
fn lab_constant(script: &str, name: &str) -> u32 {
    let path = format!("{}/scripts/lab/{script}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} = ")))
        .unwrap_or_else(|| panic!("{path}: no `{name} = ` line"));
    line[name.len() + 3..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: `{line}` is not a number: {e}"))
}

#[test]
fn lab_shared_memory_sizes_match_the_kernels() {
    assert_eq!(
        lab_constant("attention.py", "SHARED"),
        flash_attention::SHARED_BYTES
    );
    assert_eq!(lab_constant("gemm.py", "SHARED"), gemm_wgmma::SHARED_BYTES);
    assert_eq!(
        lab_constant("gemm.py", "WIDE_SHARED"),
        gemm_wgmma::WIDE_SHARED_BYTES
    );
    // The lab reports the tiling kiln's TileWidth::Auto would pick.
    assert_eq!(
        lab_constant("gemm.py", "WIDE_MIN_TILES") as usize,
        kiln::gpu::ops::gemm_wgmma::WIDE_MIN_TILES
    );
    // A kernel built for one block size (`.maxntid`) fails to launch with another.
    assert_eq!(
        lab_constant("attention.py", "THREADS"),
        flash_attention::THREADS
    );
}
