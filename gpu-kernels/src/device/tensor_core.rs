//! Tensor-core building blocks, written once and composed by every kernel: warp-level
//! `ldmatrix` + `mma.sync` (in the backends), and Hopper's warpgroup-level `wgmma` with
//! shared-memory matrix descriptors.
//!
//! Layouts (PTX ISA, "warpgroup-level matrix fragments"). A warpgroup is 4 consecutive warps
//! (128 threads, first warp index divisible by 4). For `m64nNk16` with f32 accumulators, thread
//! `t` of the warpgroup (warp `w = t / 32`, lane `l`) holds `N / 2` values: for each 8-column
//! block `j`, `d[4j + e]` is element (row `16w + l/4 + 8·(e/2)`, column `8j + 2·(l%4) + e%2`).
//! The register A fragment of `_rs` shapes is the `mma.sync` m16k16 A fragment of the warp's
//! 16 rows (`a[0..4]` at (g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..), g = l/4, t = l%4).
//!
//! Shared-memory operands are K-major tiles in the 128-byte swizzle that TMA writes with
//! `CU_TENSOR_MAP_SWIZZLE_128B`: a tile row holds 64 bf16 of K (128 bytes); within each group of
//! 8 rows (1024 bytes, the "core matrix" stride) the 16-byte chunk `c` of row `r` sits at chunk
//! `c ^ (r % 8)`. Tiles start on 1024-byte boundaries, because the hardware applies the
//! swizzle to address bits.

pub use super::wgmma_shapes::*;

/// A `wgmma` shared-memory matrix descriptor (64 bits, PTX ISA "matrix descriptor format").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct WgmmaDesc(pub u64);

/// Bytes from one 8-row core-matrix group to the next in a 128B-swizzled K-major tile.
pub const SWIZZLE_128B_GROUP_BYTES: u32 = 1024;
/// Bytes per tile row (64 bf16 of K) in the 128-byte swizzle.
pub const SWIZZLE_128B_ROW_BYTES: u32 = 128;

/// The block's dynamic shared memory rounded up to a 1024-byte boundary, where 128B-swizzled
/// tiles must start (a launch provides 1024 bytes of slack for it).
#[inline(always)]
pub fn swizzle_aligned_shared_base() -> u32 {
    (super::dynamic_shared_address() + SWIZZLE_128B_GROUP_BYTES - 1)
        & !(SWIZZLE_128B_GROUP_BYTES - 1)
}

impl WgmmaDesc {
    /// The descriptor of a K-major, 128B-swizzled bf16 tile whose first row starts at the
    /// shared-window address `addr` (rows of 64 k; 8-row groups 1024 bytes apart). To step
    /// through K inside the 64-wide row, add `16 · 2` bytes per k16 step with [`Self::advance`].
    #[inline(always)]
    pub const fn k_major_swizzle_128b(addr: u32) -> Self {
        let start = ((addr as u64) >> 4) & 0x3fff;
        // Leading-dimension offset: unused for swizzled K-major layouts (set to 1 as CUTLASS
        // does). Stride-dimension offset: 1024 bytes between 8-row groups. Swizzle mode 1 = 128B.
        let lbo = 1u64 << 16;
        let sbo = ((SWIZZLE_128B_GROUP_BYTES as u64) >> 4) << 32;
        WgmmaDesc(start | lbo | sbo | (1u64 << 62))
    }

    /// The same tile starting `bytes` further on (a multiple of 16).
    #[inline(always)]
    pub const fn advance(self, bytes: u32) -> Self {
        WgmmaDesc(self.0 + ((bytes as u64) >> 4))
    }

    /// The shared-window address the descriptor starts at (for the emulator).
    #[inline(always)]
    pub const fn start_address(self) -> u32 {
        ((self.0 & 0x3fff) << 4) as u32
    }
}

/// `wgmma.fence`: orders earlier register and shared-memory accesses before the next `wgmma`s
/// of this warpgroup (needed before the first `wgmma` that reads accumulators written
/// otherwise, and after shared memory was written by ordinary stores).
#[inline(always)]
pub fn wgmma_fence() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a warpgroup-uniform fence with no operands.
    unsafe {
        core::arch::asm!("wgmma.fence.sync.aligned;")
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::wgmma_fence();
}

/// `wgmma.commit_group`: closes the batch of `wgmma`s issued since the last commit.
#[inline(always)]
pub fn wgmma_commit() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: as `wgmma_fence`.
    unsafe {
        core::arch::asm!("wgmma.commit_group.sync.aligned;")
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::wgmma_commit();
}

/// `wgmma.wait_group N`: waits until at most `N` committed batches are still running. The
/// accumulators of every earlier batch may be read afterwards (pass them through
/// [`keep_in_registers`] so the compiler does not move reads above the wait).
#[inline(always)]
pub fn wgmma_wait<const N: u32>() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: as `wgmma_fence`.
    unsafe {
        core::arch::asm!("wgmma.wait_group.sync.aligned {n};", n = const N)
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::wgmma_wait(N);
}

/// Register arrays that `wgmma` reads or writes (accumulators, register-A fragments).
pub trait Accumulators {
    /// Tells the compiler every value may have changed here (an empty `asm!` that reads and
    /// writes each register), so no access to the accumulators moves across a `wgmma` fence
    /// or wait. Costs no instruction.
    fn keep_in_registers(&mut self);
}
