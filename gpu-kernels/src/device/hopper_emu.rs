//! Host emulation of the Hopper pieces (`wgmma`, `mbarrier`, TMA): NOT YET IMPLEMENTED.
//! Kernels that use them run only on the GPU until this module models them from the PTX ISA.

use super::In;
use super::async_copy::TensorMap;
use super::tensor_core::WgmmaDesc;

fn missing(what: &str) -> ! {
    panic!("{what} is not emulated yet: this kernel runs on the GPU only")
}

pub fn dynamic_shared_address() -> u32 {
    missing("dynamic_shared_address")
}
pub fn wgmma_ss<const L: usize>(_d: &mut [f32; L], _a: WgmmaDesc, _b: WgmmaDesc, _n: usize) {
    missing("wgmma")
}
pub fn wgmma_rs<const L: usize>(_d: &mut [f32; L], _a: [u32; 4], _b: WgmmaDesc, _n: usize) {
    missing("wgmma")
}
pub fn wgmma_fence() {
    missing("wgmma.fence")
}
pub fn wgmma_commit() {
    missing("wgmma.commit_group")
}
pub fn wgmma_wait(_n: u32) {
    missing("wgmma.wait_group")
}
pub fn mbarrier_init(_bar: u32, _arrivals: u32) {
    missing("mbarrier")
}
pub fn mbarrier_arrive(_bar: u32, _tx_bytes: u32) {
    missing("mbarrier")
}
pub fn mbarrier_try_wait(_bar: u32, _parity: u32) -> bool {
    missing("mbarrier")
}
pub fn mbarrier_wait(_bar: u32, _parity: u32) {
    missing("mbarrier")
}
pub fn tma_load_2d(_dst: u32, _map: In<TensorMap>, _x: u32, _y: u32, _bar: u32) {
    missing("TMA")
}
