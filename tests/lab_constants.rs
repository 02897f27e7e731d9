//! The PyTorch lab (scripts/lab/*.py) launches kiln's kernels from Python with the dynamic
//! shared-memory sizes written as literals; a kernel that grows its shared memory without the
//! lab following makes the lab's launches run past their allocation (seen on the H200: an
//! illegal address after flash attention went to three K/V slots). Keep them equal here.

use gpu_kernels::{flash_attention, gemm_wgmma};

fn lab_shared(script: &str) -> u32 {
    let path = format!("{}/scripts/lab/{script}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with("SHARED = "))
        .unwrap_or_else(|| panic!("{path}: no `SHARED = ` line"));
    line["SHARED = ".len()..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: `{line}` is not a number: {e}"))
}

#[test]
fn lab_shared_memory_sizes_match_the_kernels() {
    assert_eq!(lab_shared("attention.py"), flash_attention::SHARED_BYTES);
    assert_eq!(lab_shared("gemm.py"), gemm_wgmma::SHARED_BYTES);
}
