//! Asynchronous copies into shared memory and the barriers that track them: Hopper's tensor
//! memory accelerator (TMA: `cp.async.bulk.tensor`, a whole tile per instruction, described by
//! a tensor map the host encodes), `mbarrier` (a shared-memory barrier with a phase bit and a
//! transaction-byte count), the proxy fences that order ordinary and async accesses, and
//! Ampere's per-thread `cp.async` (16 bytes at a time).
//!
//! An `mbarrier` completes a phase when its expected arrivals have arrived AND the bytes
//! announced with `arrive_expect_tx` have landed. Waiters name the phase parity they wait for:
//! a pipeline slot used for the `u`-th time waits for parity `u % 2`.

use super::In;

/// A CUDA tensor map (`CUtensorMap`, 128 bytes, 64-byte aligned) in global memory, encoded on
/// the host (`cuTensorMapEncodeTiled`). The kernel only passes its address to TMA instructions.
/// The emulator reads its own encoding instead ([`TensorMap::emulated_2d`]).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct TensorMap(pub [u64; 16]);

/// How TMA lays a box out in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Swizzle {
    /// Rows packed one after another.
    None = 0,
    /// 128-byte swizzle: within each 1024-byte group of 8 rows of 128 bytes, the 16-byte chunk
    /// `c` of row `r` lands at chunk `c ^ (r % 8)` (byte address bits 4–6 ^= bits 7–9).
    B128 = 3,
}

/// First word of an emulator tensor map (so a GPU map handed to the emulator is caught).
pub const EMULATED_TENSOR_MAP_MAGIC: u64 = 0x6b69_6c6e_5f74_6d61; // "kiln_tma"

impl TensorMap {
    /// The emulator's encoding of a 2-D tiled map (the GPU's is opaque, made by the driver):
    /// word 0 `EMULATED_TENSOR_MAP_MAGIC`; 1 the base address (a host pointer); 2 `cols` and
    /// 3 `rows` (elements, innermost first); 4 the row stride in bytes; 5 `box_cols |
    /// box_rows << 32`; 6 `elem_bytes | swizzle << 8`; 7 the buffer's bytes if known (see
    /// [`Self::with_extent`]). Elements outside `cols × rows` read as zero, as
    /// `CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE` does.
    #[allow(clippy::too_many_arguments)] // mirrors cuTensorMapEncodeTiled's own argument list
    pub const fn emulated_2d(
        base: u64,
        elem_bytes: u32,
        cols: u64,
        rows: u64,
        row_stride_bytes: u64,
        box_cols: u32,
        box_rows: u32,
        swizzle: Swizzle,
    ) -> Self {
        let mut w = [0u64; 16];
        w[0] = EMULATED_TENSOR_MAP_MAGIC;
        w[1] = base;
        w[2] = cols;
        w[3] = rows;
        w[4] = row_stride_bytes;
        w[5] = box_cols as u64 | (box_rows as u64) << 32;
        w[6] = elem_bytes as u64 | (swizzle as u64) << 8;
        TensorMap(w)
    }

    /// The same emulator map, recording that its base points into a buffer of `bytes` bytes
    /// (word 7; 0 = not recorded): the emulator then refuses a map whose tensor does not fit
    /// in it, instead of reading past the buffer.
    pub const fn with_extent(mut self, bytes: u64) -> Self {
        self.0[7] = bytes;
        self
    }
}

/// How long (in SM cycles, ≈ 2 s at 2 GHz) a barrier wait may take before the kernel traps:
/// far beyond any real copy or pipeline step (microseconds), short enough that a deadlock
/// fails fast.
#[cfg(target_arch = "nvptx64")]
const WAIT_LIMIT_CYCLES: u64 = 4_000_000_000;

/// A shared-memory `mbarrier` (8 bytes at a shared-window address).
#[derive(Clone, Copy, Debug)]
pub struct Mbarrier(pub u32);

impl Mbarrier {
    /// `mbarrier.init`: expects `arrivals` arrivals per phase. One thread initialises; then
    /// [`fence_mbarrier_init`] and a block barrier before anyone uses it.
    #[inline(always)]
    pub fn init(self, arrivals: u32) {
        #[cfg(target_arch = "nvptx64")]
        // SAFETY: `self.0` is an 8-byte-aligned shared address reserved for this barrier.
        unsafe {
            core::arch::asm!("mbarrier.init.shared::cta.b64 [{0}], {1};", in(reg32) self.0, in(reg32) arrivals)
        };
        #[cfg(not(target_arch = "nvptx64"))]
        super::emu::hopper::mbarrier_init(self.0, arrivals);
    }

    /// One arrival.
    #[inline(always)]
    pub fn arrive(self) {
        #[cfg(target_arch = "nvptx64")]
        // SAFETY: as `init`.
        unsafe {
            core::arch::asm!("mbarrier.arrive.shared::cta.b64 _, [{0}];", in(reg32) self.0)
        };
        #[cfg(not(target_arch = "nvptx64"))]
        super::emu::hopper::mbarrier_arrive(self.0);
    }

    /// One arrival on the barrier at this barrier's offset in the shared memory of the
    /// cluster's block `rank` (`mapa` + `mbarrier.arrive.release.cluster.shared::cluster`): how
    /// a consumer releases a pipeline slot that a peer block's producer refills (by multicast).
    /// Release semantics at cluster scope: this thread's reads of the slot are ordered before
    /// the peer's refill. `rank` may be this block's own.
    #[inline(always)]
    pub fn arrive_cluster(self, rank: u32) {
        #[cfg(target_arch = "nvptx64")]
        // SAFETY: as `init`, in block `rank` of the cluster (`rank` < the cluster size, and the
        // peer has initialised its barrier and not exited: a `cluster_sync` orders both).
        unsafe {
            core::arch::asm!(
                "{{ .reg .b32 r; mapa.shared::cluster.u32 r, {0}, {1}; mbarrier.arrive.release.cluster.shared::cluster.b64 _, [r]; }}",
                in(reg32) self.0, in(reg32) rank
            )
        };
        #[cfg(not(target_arch = "nvptx64"))]
        super::emu::hopper::mbarrier_arrive_cluster(self.0, rank);
    }

    /// One arrival if `pred` (one predicated instruction: see [`Mbarrier::arrive_if`] for why no
    /// branch) on the barrier at this offset in the cluster's block `rank`, with release
    /// semantics at CTA scope (`mbarrier.arrive.release.cta.shared::cluster`, the PTX default,
    /// CUTLASS's `ClusterBarrier::arrive(cta_id, pred)`): for a consumer releasing a slot whose
    /// only accesses were `wgmma` operand reads, complete once `wgmma.wait_group` returned (the
    /// same order the local [`Mbarrier::arrive_if`] release relies on). Not for releasing
    /// ordinary writes to a peer: that needs [`Mbarrier::arrive_cluster`]'s cluster scope, which
    /// ptxas 12.9 compiles to `MEMBAR.ALL.CTA; MEMBAR.ALL.GPU; ERRBAR; CGAERRBAR` before the
    /// arrival (SASS), a stall of the releasing warp on every pipeline slot.
    #[inline(always)]
    pub fn arrive_cluster_if(self, rank: u32, pred: bool) {
        #[cfg(target_arch = "nvptx64")]
        // SAFETY: as `arrive_cluster`.
        unsafe {
            core::arch::asm!(
                "{{ .reg .pred p; .reg .b32 r; setp.ne.b32 p, {2}, 0; mapa.shared::cluster.u32 r, {0}, {1}; @p mbarrier.arrive.release.cta.shared::cluster.b64 _, [r]; }}",
                in(reg32) self.0, in(reg32) rank, in(reg32) pred as u32
            )
        };
        #[cfg(not(target_arch = "nvptx64"))]
        if pred {
            super::emu::hopper::mbarrier_arrive_cluster(self.0, rank);
        }
    }

    /// One arrival if `pred`, without a branch: a predicated instruction, so code that runs
    /// while a `wgmma` batch is in flight stays convergent (a branch around the arrival made
    /// ptxas serialise the `wgmma`s, C7518).
    #[inline(always)]
    pub fn arrive_if(self, pred: bool) {
        #[cfg(target_arch = "nvptx64")]
        // SAFETY: as `init`.
        unsafe {
            core::arch::asm!(
                "{{ .reg .pred p; setp.ne.b32 p, {1}, 0; @p mbarrier.arrive.shared::cta.b64 _, [{0}]; }}",
                in(reg32) self.0, in(reg32) pred as u32
            )
        };
        #[cfg(not(target_arch = "nvptx64"))]
        if pred {
            super::emu::hopper::mbarrier_arrive(self.0);
        }
    }

    /// One arrival that also announces `bytes` more to land in this phase (by TMA copies that
    /// name this barrier).
    #[inline(always)]
    pub fn arrive_expect_tx(self, bytes: u32) {
        #[cfg(target_arch = "nvptx64")]
        // SAFETY: as `init`.
        unsafe {
            core::arch::asm!("mbarrier.arrive.expect_tx.shared::cta.b64 _, [{0}], {1};", in(reg32) self.0, in(reg32) bytes)
        };
        #[cfg(not(target_arch = "nvptx64"))]
        super::emu::hopper::mbarrier_arrive_expect_tx(self.0, bytes);
    }

    /// Whether the phase with parity `parity` has completed (non-blocking for long: the
    /// hardware may suspend the thread for a while).
    #[inline(always)]
    pub fn try_wait(self, parity: u32) -> bool {
        #[cfg(target_arch = "nvptx64")]
        {
            let done: u32;
            // SAFETY: as `init`.
            unsafe {
                core::arch::asm!(
                    "{{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [{1}], {2}; selp.u32 {0}, 1, 0, p; }}",
                    out(reg32) done, in(reg32) self.0, in(reg32) parity
                )
            };
            done != 0
        }
        #[cfg(not(target_arch = "nvptx64"))]
        super::emu::hopper::mbarrier_try_wait(self.0, parity)
    }

    /// Whether the phase with parity `parity` has completed, without suspending the thread
    /// (`test_wait`: for a producer that only refills a slot if it is already free).
    #[inline(always)]
    pub fn test_wait(self, parity: u32) -> bool {
        #[cfg(target_arch = "nvptx64")]
        {
            let done: u32;
            // SAFETY: as `init`.
            unsafe {
                core::arch::asm!(
                    "{{ .reg .pred p; mbarrier.test_wait.parity.shared::cta.b64 p, [{1}], {2}; selp.u32 {0}, 1, 0, p; }}",
                    out(reg32) done, in(reg32) self.0, in(reg32) parity
                )
            };
            done != 0
        }
        #[cfg(not(target_arch = "nvptx64"))]
        super::emu::hopper::mbarrier_try_wait(self.0, parity)
    }

    /// Blocks until the phase with parity `parity` has completed. A wait that never ends (a
    /// pipeline bug: a copy that never lands, an arrival that never comes) traps after
    /// `WAIT_LIMIT_CYCLES`, so the launch fails with an error instead of hanging the process.
    ///
    /// The poll loop is one `asm!` block, in the shape ptxas recognises: spelled as a Rust loop
    /// around `try_wait`, ptxas treated the loop as divergent code and serialised the `wgmma`
    /// batch in flight across it (C7518).
    #[inline(always)]
    // PTX labels declared inside `{ }` are local to that block, so every inlined copy of this
    // `asm!` has its own (the lint is about assemblers where labels are global).
    #[cfg_attr(target_arch = "nvptx64", allow(named_asm_labels))]
    pub fn wait(self, parity: u32) {
        #[cfg(target_arch = "nvptx64")]
        // SAFETY: as `init`; the block's labels are local to its braces.
        unsafe {
            core::arch::asm!(
                "{{",
                ".reg .pred p;",
                ".reg .u64 t0, t1;",
                "mov.u64 t0, %clock64;",
                "KILN_WAIT:",
                "mbarrier.try_wait.parity.shared::cta.b64 p, [{0}], {1};",
                "@p bra KILN_DONE;",
                "mov.u64 t1, %clock64;",
                "sub.u64 t1, t1, t0;",
                "setp.lt.u64 p, t1, {2};",
                "@p bra KILN_WAIT;",
                "trap;",
                "KILN_DONE:",
                "}}",
                in(reg32) self.0, in(reg32) parity, in(reg64) WAIT_LIMIT_CYCLES,
            )
        };
        #[cfg(not(target_arch = "nvptx64"))]
        super::emu::hopper::mbarrier_wait(self.0, parity);
    }
}

/// Makes `mbarrier.init`s visible to the async proxy (TMA) and to the other threads once a
/// block barrier follows. (A no-op on the emulator: see `emu::hopper`.)
#[inline(always)]
pub fn fence_mbarrier_init() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a fence.
    unsafe {
        core::arch::asm!("fence.mbarrier_init.release.cluster;")
    };
}

/// Orders this thread's ordinary shared-memory writes before later async-proxy reads of them
/// (`wgmma` operands, TMA stores). (A no-op on the emulator: see `emu::hopper`.)
#[inline(always)]
pub fn fence_proxy_async_shared() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a fence.
    unsafe {
        core::arch::asm!("fence.proxy.async.shared::cta;")
    };
}

/// The generic address of a tensor map, as TMA instructions take it.
#[inline(always)]
#[cfg(target_arch = "nvptx64")]
fn tensor_map_address(map: In<TensorMap>) -> u64 {
    map.address()
}

/// Starts loading the 2-D box at coordinates (`x` innermost, `y`) of `map` into shared memory
/// at `dst`; its bytes count towards `bar`'s current phase. Elements outside the tensor read as
/// zero. Issued by one thread.
#[inline(always)]
pub fn tma_load_2d(dst: u32, map: In<TensorMap>, x: u32, y: u32, bar: Mbarrier) {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: `dst` is a 1024-aligned shared buffer the size of the map's box, `bar` a live
    // barrier, `map` a valid tensor map in global memory (encoded by the host).
    unsafe {
        core::arch::asm!(
            "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [{0}], [{1}, {{{2}, {3}}}], [{4}];",
            in(reg32) dst, in(reg64) tensor_map_address(map), in(reg32) x, in(reg32) y, in(reg32) bar.0
        )
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::tma_load_2d(dst, map, x, y, bar.0);
}

/// [`tma_load_2d`] into every block of the cluster whose rank is set in `cta_mask` (bit `r` =
/// rank `r`): one read of the box from global memory (L2) lands at offset `dst` in each of
/// those blocks' shared memory, and each one's barrier at offset `bar` is credited with the
/// bytes that land there (`.multicast::cluster`). Every destination must have initialised its
/// barrier (a `cluster_sync` after the inits) and announce the bytes itself (its own
/// `arrive_expect_tx`). Issued by one thread; sm_90a.
#[inline(always)]
pub fn tma_load_2d_multicast(
    dst: u32,
    map: In<TensorMap>,
    x: u32,
    y: u32,
    bar: Mbarrier,
    cta_mask: u16,
) {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: as `tma_load_2d`, in every block of `cta_mask` (all inside the cluster).
    unsafe {
        core::arch::asm!(
            "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [{0}], [{1}, {{{2}, {3}}}], [{4}], {5};",
            in(reg32) dst, in(reg64) tensor_map_address(map), in(reg32) x, in(reg32) y,
            in(reg32) bar.0, in(reg16) cta_mask
        )
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::tma_load_2d_multicast(dst, map, x, y, bar.0, cta_mask);
}

/// Makes a tensor map that the host copied into global memory visible to the TMA unit (the
/// "tensormap proxy"). Each thread that issues TMA with `map` calls this once before its first
/// use; without it the unit may read a stale descriptor and the copy never completes. (On the
/// emulator: checks the map, so a GPU-encoded one is caught at its first use.)
#[inline(always)]
pub fn acquire_tensor_map(map: In<TensorMap>) {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a fence over the 128 bytes of a valid tensor map.
    unsafe {
        core::arch::asm!("fence.proxy.tensormap::generic.acquire.sys [{0}], 128;", in(reg64) tensor_map_address(map))
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::acquire_tensor_map(map);
}

/// Starts copying `bytes` (a multiple of 16) from global memory at `src` to shared memory at
/// `dst` (both 16-byte aligned); the bytes count towards `bar`'s current phase. One thread.
#[inline(always)]
pub fn bulk_load<T: Copy>(dst: u32, src: In<T>, bytes: u32, bar: Mbarrier) {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: the caller sized `dst` and `src` for `bytes`; `bar` is a live barrier.
    unsafe {
        core::arch::asm!(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [{0}], [{1}], {2}, [{3}];",
            in(reg32) dst, in(reg64) src.address(), in(reg32) bytes, in(reg32) bar.0
        )
    };
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::bulk_load(dst, src, bytes, bar.0);
}

/// Prefetches a tensor map's descriptor into the TMA unit's cache. (A no-op on the emulator.)
#[inline(always)]
pub fn prefetch_tensor_map(map: In<TensorMap>) {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a prefetch hint on a valid address.
    unsafe {
        core::arch::asm!("prefetch.tensormap [{0}];", in(reg64) tensor_map_address(map))
    };
    #[cfg(not(target_arch = "nvptx64"))]
    let _ = map;
}

/// Starts copying 16 bytes, element `index` of `src` onward (16-byte aligned), to shared
/// memory at `dst` (16-byte aligned): Ampere's per-thread `cp.async.cg` (through L2 only).
/// With `!valid` it writes 16 zero bytes and reads nothing. Completion: [`cp_async_commit`]
/// closes a group, [`cp_async_wait`] waits for all but the newest groups. (The emulator
/// copies at once, so a reader that does not wait still races visibly with the next refill.)
#[inline(always)]
pub fn cp_async_16<T: Copy>(dst: u32, src: In<T>, index: usize, valid: bool) {
    #[cfg(target_arch = "nvptx64")]
    {
        let (s, bytes) = if valid {
            (src.offset(index).address(), 16u32)
        } else {
            (src.address(), 0)
        };
        // SAFETY: `dst` is a 16-byte aligned shared address the caller reserved; `s` is in
        // bounds (checked by the launch wrapper) or not read (source size 0 zero-fills).
        unsafe {
            core::arch::asm!(
                "{{ .reg .u64 g; cvta.to.global.u64 g, {s}; cp.async.cg.shared.global [{d}], [g], 16, {n}; }}",
                d = in(reg32) dst,
                s = in(reg64) s,
                n = in(reg32) bytes,
            )
        }
    }
    #[cfg(not(target_arch = "nvptx64"))]
    super::emu::hopper::cp_async_16(dst, src, index, valid);
}

/// Closes this thread's current group of `cp_async_16` copies (`cp.async.commit_group`).
#[inline(always)]
pub fn cp_async_commit() {
    // SAFETY: no operands; it only groups the thread's own copies.
    #[cfg(target_arch = "nvptx64")]
    unsafe {
        core::arch::asm!("cp.async.commit_group;")
    }
}

/// Waits until at most `PENDING` of this thread's commit groups are still in flight
/// (`cp.async.wait_group`; the emulator's copies have all landed already).
#[inline(always)]
pub fn cp_async_wait<const PENDING: u32>() {
    // SAFETY: waits on the thread's own copies.
    #[cfg(target_arch = "nvptx64")]
    unsafe {
        core::arch::asm!("cp.async.wait_group {n};", n = const PENDING)
    }
}
