//! The device API on nvptx: special registers, NVVM intrinsics and inline PTX.
//!
//! Warp-synchronous operations go through LLVM intrinsics rather than `asm!`, because rustc does
//! not mark inline assembly `convergent` and LLVM could otherwise sink it under a branch.

use super::ptr::Out;
use super::types::{Dim3, SharedWord};
use core::arch::nvptx;
use core::marker::PhantomData;

#[inline(always)]
pub fn thread_idx() -> Dim3 {
    // SAFETY: reading special registers has no preconditions.
    unsafe {
        Dim3::new(
            nvptx::_thread_idx_x() as u32,
            nvptx::_thread_idx_y() as u32,
            nvptx::_thread_idx_z() as u32,
        )
    }
}

#[inline(always)]
pub fn block_idx() -> Dim3 {
    // SAFETY: as above.
    unsafe {
        Dim3::new(
            nvptx::_block_idx_x() as u32,
            nvptx::_block_idx_y() as u32,
            nvptx::_block_idx_z() as u32,
        )
    }
}

#[inline(always)]
pub fn block_dim() -> Dim3 {
    // SAFETY: as above.
    unsafe {
        Dim3::new(
            nvptx::_block_dim_x() as u32,
            nvptx::_block_dim_y() as u32,
            nvptx::_block_dim_z() as u32,
        )
    }
}

#[inline(always)]
pub fn grid_dim() -> Dim3 {
    // SAFETY: as above.
    unsafe {
        Dim3::new(
            nvptx::_grid_dim_x() as u32,
            nvptx::_grid_dim_y() as u32,
            nvptx::_grid_dim_z() as u32,
        )
    }
}

/// `barrier.sync 0`: every non-exited thread of the block must reach it.
///
/// Not `bar.sync` (`__syncthreads`, which is `barrier.sync.aligned`): LLVM may tail-duplicate a
/// barrier into both arms of a branch (seen: a `tid == 0` setup block got its own copy), and the
/// `.aligned` form is undefined when the threads of a warp reach different copies: the block
/// hung on the H200. The non-aligned form counts threads, wherever each one arrives.
#[inline(always)]
pub fn sync_threads() {
    // SAFETY: a block barrier; every live thread reaches one of its copies.
    unsafe { core::arch::asm!("barrier.sync 0;") }
}

const FULL_MASK: u32 = 0xffff_ffff;

#[allow(improper_ctypes)]
unsafe extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.bfly.i32"]
    fn shfl_bfly_i32(mask: u32, v: u32, lane_mask: u32, clamp: u32) -> u32;
    #[link_name = "llvm.nvvm.shfl.sync.down.i32"]
    fn shfl_down_i32(mask: u32, v: u32, delta: u32, clamp: u32) -> u32;
    #[link_name = "llvm.nvvm.shfl.sync.idx.i32"]
    fn shfl_idx_i32(mask: u32, v: u32, lane: u32, clamp: u32) -> u32;
    #[link_name = "llvm.nvvm.vote.ballot.sync"]
    fn vote_ballot_sync(mask: u32, pred: bool) -> u32;
}

// Full-warp operations: all 32 lanes take part. The clamp operand 0x1f addresses the whole warp.
#[inline(always)]
pub fn shfl_xor_u32(v: u32, lane_mask: u32) -> u32 {
    // SAFETY: warp-uniform call with a full mask.
    unsafe { shfl_bfly_i32(FULL_MASK, v, lane_mask, 0x1f) }
}
#[inline(always)]
pub fn shfl_xor_f32(v: f32, lane_mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(v.to_bits(), lane_mask))
}
#[inline(always)]
pub fn shfl_down_f32(v: f32, delta: u32) -> f32 {
    // SAFETY: as above.
    f32::from_bits(unsafe { shfl_down_i32(FULL_MASK, v.to_bits(), delta, 0x1f) })
}
#[inline(always)]
pub fn shfl_idx_u32(v: u32, lane: u32) -> u32 {
    // SAFETY: as above.
    unsafe { shfl_idx_i32(FULL_MASK, v, lane, 0x1f) }
}
#[inline(always)]
pub fn shfl_idx_f32(v: f32, lane: u32) -> f32 {
    f32::from_bits(shfl_idx_u32(v.to_bits(), lane))
}
#[inline(always)]
pub fn ballot(pred: bool) -> u32 {
    // SAFETY: as above.
    unsafe { vote_ballot_sync(FULL_MASK, pred) }
}
/// The largest `v` of the warp's 32 lanes, in one instruction (`redux.sync.max.u32`, sm_80+):
/// where a butterfly of shuffles takes five dependent rounds.
#[inline(always)]
pub fn warp_max_u32(v: u32) -> u32 {
    let out: u32;
    // SAFETY: a full-warp reduction with a full mask; every lane of the warp executes it.
    unsafe {
        core::arch::asm!("redux.sync.max.u32 {0}, {1}, 0xffffffff;", out(reg32) out, in(reg32) v)
    };
    out
}
/// `bar.warp.sync`: the lanes of the warp wait for each other, and their shared-memory accesses
/// before it happen before those after it (lanes of a warp are not in lockstep since Volta).
#[inline(always)]
pub fn sync_warp() {
    // SAFETY: a full-warp barrier; every lane of the warp reaches it.
    unsafe { core::arch::asm!("bar.warp.sync 0xffffffff;") }
}
#[inline(always)]
pub fn vote_any(pred: bool) -> bool {
    ballot(pred) != 0
}
#[inline(always)]
pub fn vote_all(pred: bool) -> bool {
    ballot(pred) == FULL_MASK
}

/// `atom.global.add.f32`; returns the old value.
#[inline(always)]
pub fn atomic_add_f32(p: Out<f32>, i: usize, v: f32) -> f32 {
    let old: f32;
    // SAFETY: the element pointer is in bounds (launch-checked) and 4-byte aligned.
    unsafe {
        core::arch::asm!("atom.add.f32 {0}, [{1}], {2};", out(reg32) old, in(reg64) p.element_ptr(i), in(reg32) v)
    };
    old
}

/// `fence.acq_rel.gpu`: this thread's memory accesses before it (and, after a block barrier,
/// those of the threads it synchronised with) are ordered before its accesses after it, for
/// every thread of the GPU: with an atomic after it, the "last block done" handshake.
#[inline(always)]
pub fn threadfence() {
    // SAFETY: a memory fence; touches no memory.
    unsafe { core::arch::asm!("fence.acq_rel.gpu;") };
}

/// `atom.add.u32`; returns the old value.
#[inline(always)]
pub fn atomic_add_u32(p: Out<u32>, i: usize, v: u32) -> u32 {
    let old: u32;
    // SAFETY: as above.
    unsafe {
        core::arch::asm!("atom.add.u32 {0}, [{1}], {2};", out(reg32) old, in(reg64) p.element_ptr(i), in(reg32) v)
    };
    old
}

/// A view of shared memory: a 32-bit shared-window address and an element count.
pub struct Shared<T> {
    base: u32,
    _t: PhantomData<T>,
}
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}

impl<T: SharedWord> Shared<T> {
    #[doc(hidden)]
    #[inline(always)]
    pub fn from_raw(base: u32, _len: usize) -> Self {
        Shared {
            base,
            _t: PhantomData,
        }
    }

    #[inline(always)]
    pub fn load(self, i: usize) -> T {
        let w: u32;
        // SAFETY: shared-window address inside the array (kernel-checked indexing).
        unsafe {
            core::arch::asm!("ld.shared.b32 {0}, [{1}];", out(reg32) w, in(reg32) self.base + 4 * i as u32)
        };
        T::from_word(w)
    }

    #[inline(always)]
    pub fn store(self, i: usize, v: T) {
        // SAFETY: as `load`.
        unsafe {
            core::arch::asm!("st.shared.b32 [{0}], {1};", in(reg32) self.base + 4 * i as u32, in(reg32) v.to_word())
        };
    }

    /// Four words at `i` (a multiple of 4): one 16-byte `ld.shared.v4`.
    #[inline(always)]
    pub fn load4(self, i: usize) -> [T; 4] {
        let (a, b, c, d): (u32, u32, u32, u32);
        // SAFETY: as `load`; arrays are 16-byte aligned and `i % 4 == 0`.
        unsafe {
            core::arch::asm!(
                "ld.shared.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
                out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d,
                in(reg32) self.base + 4 * i as u32
            )
        };
        [
            T::from_word(a),
            T::from_word(b),
            T::from_word(c),
            T::from_word(d),
        ]
    }

    /// Two words at `i` (even) in one 8-byte store.
    #[inline(always)]
    pub fn store2(self, i: usize, v: [T; 2]) {
        // SAFETY: as `load`; arrays are 16-byte aligned and `i % 2 == 0`.
        unsafe {
            core::arch::asm!(
                "st.shared.v2.b32 [{0}], {{{1}, {2}}};",
                in(reg32) self.base + 4 * i as u32,
                in(reg32) v[0].to_word(), in(reg32) v[1].to_word()
            )
        };
    }

    /// Four words at `i` (a multiple of 4) in one 16-byte store.
    #[inline(always)]
    pub fn store4(self, i: usize, v: [T; 4]) {
        // SAFETY: as `load4`.
        unsafe {
            core::arch::asm!(
                "st.shared.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};",
                in(reg32) self.base + 4 * i as u32,
                in(reg32) v[0].to_word(), in(reg32) v[1].to_word(),
                in(reg32) v[2].to_word(), in(reg32) v[3].to_word()
            )
        };
    }

    /// The sub-array starting `offset` elements in.
    #[inline(always)]
    pub fn offset(self, offset: usize) -> Self {
        Shared {
            base: self.base + 4 * offset as u32,
            _t: PhantomData,
        }
    }

    /// The same bytes viewed as another 4-byte type.
    #[inline(always)]
    pub fn cast<U: SharedWord>(self) -> Shared<U> {
        Shared {
            base: self.base,
            _t: PhantomData,
        }
    }

    /// The shared-window byte address of element 0 (for descriptors).
    #[inline(always)]
    pub fn addr(self) -> u32 {
        self.base
    }
}

/// The nvptx half of `shared_array!` (the emulator has its own): `declare` (item position) is a
/// `.shared` variable declared with module-level assembly (a `#[link_section]` static would
/// silently land in global memory); `handle` addresses it with `mov.u32`.
#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_static_shared {
    (declare $name:ident, $n:expr) => {
        core::arch::global_asm!(
            concat!(".shared .align 16 .b8 kiln_smem_", stringify!($name), "[{bytes}];"),
            bytes = const ($n) * 4
        );
    };
    (handle $name:ident, $t:ty, $n:expr) => {{
        let base: u32;
        // SAFETY: reads the shared-window address of the symbol `declare` made.
        unsafe {
            core::arch::asm!(
                concat!("mov.u32 {0}, kiln_smem_", stringify!($name), ";"),
                out(reg32) base
            )
        };
        $crate::device::Shared::<$t>::from_raw(base, $n)
    }};
}

core::arch::global_asm!(".extern .shared .align 16 .b8 kiln_dyn_smem[];");

/// The shared-window address of the block's dynamic shared memory.
#[inline(always)]
pub fn dynamic_shared_address() -> u32 {
    let base: u32;
    // SAFETY: reads the address of the dynamic shared window declared above.
    unsafe { core::arch::asm!("mov.u32 {0}, kiln_dyn_smem;", out(reg32) base) };
    base
}

/// The block's dynamic shared memory (sized at launch) as `len` elements of `T`.
#[inline(always)]
pub fn dynamic_shared<T: SharedWord>(len: usize) -> Shared<T> {
    let base: u32;
    // SAFETY: reads the address of the dynamic shared window declared above.
    unsafe { core::arch::asm!("mov.u32 {0}, kiln_dyn_smem;", out(reg32) base) };
    Shared::from_raw(base, len)
}

/// One warp-wide tensor-core product `D = A·B + C` of a 16×16 bf16 tile of A (row-major), a
/// 16×8 bf16 tile of B (column-major) and a 16×8 f32 accumulator, in the PTX fragment layout
/// (`groupID = lane / 4`, `t = lane % 4`): `a[0..4]` hold A at (g, 2t..), (g+8, 2t..),
/// (g, 2t+8..), (g+8, 2t+8..); `b[0..2]` hold B at k = 2t.., 2t+8.. of column g; `c`/result
/// hold (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1). The lower k of a pair sits in bits 0–15.
/// All 32 lanes must call it together (warp-uniform control flow).
#[inline(always)]
pub fn mma_bf16_m16n8k16(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
    let (d0, d1, d2, d3): (f32, f32, f32, f32);
    // SAFETY: register-only warp-synchronous instruction; callers keep it warp-uniform.
    unsafe {
        core::arch::asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{10}, {11}, {12}, {13}}};",
            lateout(reg32) d0, lateout(reg32) d1, lateout(reg32) d2, lateout(reg32) d3,
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
            in(reg32) c[0], in(reg32) c[1], in(reg32) c[2], in(reg32) c[3],
        )
    };
    [d0, d1, d2, d3]
}
