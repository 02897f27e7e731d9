//! Thread-block clusters (Hopper): the blocks of one cluster run at the same time on
//! neighbouring SMs and can reach each other's shared memory, which is what lets one TMA load
//! fill the same tile in several blocks at once (`async_copy::tma_load_2d_multicast`) and one
//! block release a pipeline slot to another (`Mbarrier::arrive_cluster`). A kernel opts in with
//! `kernel! { threads = N; cluster = C; ... }`; its clusters are `C` consecutive blocks along x.
//!
//! Shared-memory addresses: what `Shared::addr` and `dynamic_shared_address` give are
//! CTA-relative (`.shared::cta`) and mean "this block". [`map_shared_to_rank`] turns one into
//! the address of the same offset in another block of the cluster (`.shared::cluster`); only
//! instructions that take a `.shared::cluster` operand accept those. In the emulator they are
//! an encoding of (rank, offset) that its accessors resolve (see `emu::cluster`).
//!
//! PTX spellings: PTX ISA 8.0 ("Special registers: %cluster_ctarank, %cluster_nctarank",
//! "barrier.cluster", "mapa", "mbarrier.arrive"), checked by ptxas 12.9 for sm_90a through the
//! probe kernels in `probe.rs` (every one is compiled by `build.rs`).

/// This block's rank in its cluster (`%cluster_ctarank`): 0..[`cluster_size`]. 0 in a kernel
/// launched without clusters (every block is then a cluster of one).
#[inline(always)]
pub fn cluster_ctarank() -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u32;
        // SAFETY: reads a special register.
        unsafe { core::arch::asm!("mov.u32 {0}, %cluster_ctarank;", out(reg32) r) };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::cluster_ctarank()
}

/// Blocks in this block's cluster (`%cluster_nctarank`): 1 without clusters.
#[inline(always)]
pub fn cluster_size() -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u32;
        // SAFETY: reads a special register.
        unsafe { core::arch::asm!("mov.u32 {0}, %cluster_nctarank;", out(reg32) r) };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::cluster_size()
}

/// Waits until every (non-exited) thread of every block of the cluster has arrived; writes
/// before it, to any block's shared memory, are visible after it (`barrier.cluster.arrive.release`
/// then `barrier.cluster.wait.acquire`). Needed after initialising barriers that other blocks
/// will arrive on or multicast into, and before a block exits while others may still reach its
/// shared memory. Also a barrier over the calling block, like `sync_threads`.
#[inline(always)]
pub fn cluster_sync() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a barrier; the non-`.aligned` forms allow divergent callers (rustc does not mark
    // inline asm convergent, so nothing promises the warp is converged here).
    unsafe {
        core::arch::asm!(
            "barrier.cluster.arrive.release;",
            "barrier.cluster.wait.acquire;"
        )
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::cluster_sync();
}

/// The `.shared::cluster` address of byte `addr` (a CTA-relative shared address of this block)
/// in the shared memory of the cluster's block `rank` (`mapa.shared::cluster.u32`). `rank` must
/// be below [`cluster_size`].
#[inline(always)]
pub fn map_shared_to_rank(addr: u32, rank: u32) -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u32;
        // SAFETY: an address computation; nothing is accessed.
        unsafe {
            core::arch::asm!("mapa.shared::cluster.u32 {0}, {1}, {2};", out(reg32) r, in(reg32) addr, in(reg32) rank)
        };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::map_shared_to_rank(addr, rank)
}
