//! Global-memory pointers handed to kernels.
//!
//! On nvptx they are bare pointers (`repr(transparent)`, so they can be kernel parameters) and
//! indexing is unchecked: the host launch wrappers check every length before a launch, which is
//! where kiln establishes memory safety. On the host they carry their length, and every access
//! is checked, so the emulator reports an out-of-range index instead of corrupting memory.

use core::marker::PhantomData;

/// A read-only view of device memory.
#[cfg_attr(target_arch = "nvptx64", repr(transparent))]
pub struct In<T> {
    ptr: *const T,
    #[cfg(not(target_arch = "nvptx64"))]
    len: usize,
    _t: PhantomData<T>,
}

/// A writable view of device memory. Copy, like a CUDA pointer: kernels must not let two
/// threads write one element without synchronisation.
#[cfg_attr(target_arch = "nvptx64", repr(transparent))]
pub struct Out<T> {
    ptr: *mut T,
    #[cfg(not(target_arch = "nvptx64"))]
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for In<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for In<T> {}
impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Out<T> {}

// SAFETY (host): these are device pointers by design; the emulator shares them between the
// threads of a launch exactly as the GPU does. Races are the kernel's responsibility, as on a GPU.
#[cfg(not(target_arch = "nvptx64"))]
unsafe impl<T> Send for In<T> {}
#[cfg(not(target_arch = "nvptx64"))]
unsafe impl<T> Sync for In<T> {}
#[cfg(not(target_arch = "nvptx64"))]
unsafe impl<T> Send for Out<T> {}
#[cfg(not(target_arch = "nvptx64"))]
unsafe impl<T> Sync for Out<T> {}

#[cfg(not(target_arch = "nvptx64"))]
#[cold]
#[inline(never)]
fn out_of_bounds(kind: &str, i: usize, len: usize) -> ! {
    panic!("out-of-bounds {kind} of global memory: index {i}, length {len}")
}

impl<T: Copy> In<T> {
    /// Host side: a view of `len` elements at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay allocated, and not be written except through `Out` views of
    /// the same launch, for as long as any kernel uses the view.
    #[cfg(not(target_arch = "nvptx64"))]
    pub unsafe fn from_raw_parts(ptr: *const T, len: usize) -> Self {
        In {
            ptr,
            len,
            _t: PhantomData,
        }
    }

    /// Host side: a view of a slice that outlives the launch.
    #[cfg(not(target_arch = "nvptx64"))]
    pub fn from_slice(s: &[T]) -> Self {
        In {
            ptr: s.as_ptr(),
            len: s.len(),
            _t: PhantomData,
        }
    }

    #[inline(always)]
    pub fn at(self, i: usize) -> T {
        #[cfg(not(target_arch = "nvptx64"))]
        if i >= self.len {
            out_of_bounds("read", i, self.len);
        }
        // SAFETY: on the host `i` was just checked; on the device the launch wrapper checked
        // the buffer length against the index range the kernel is written to touch.
        unsafe { self.ptr.add(i).read() }
    }

    /// Four consecutive elements starting at `i` (a multiple of 4), one 16-byte load when
    /// `T` is 4 bytes wide and the buffer is 16-byte aligned (device allocations are).
    #[inline(always)]
    pub fn at4(self, i: usize) -> [T; 4] {
        #[cfg(not(target_arch = "nvptx64"))]
        if i + 4 > self.len || !i.is_multiple_of(4) {
            out_of_bounds("4-wide read", i, self.len);
        }
        // LLVM loads a 16-byte aggregate that is only copied elsewhere as 8-byte pieces through
        // local memory (seen in `moe_gather_rows`), so on the device it is one `ld.global.v4`.
        #[cfg(target_arch = "nvptx64")]
        {
            const { assert!(core::mem::size_of::<T>() == 4) };
            let (a, b, c, d): (u32, u32, u32, u32);
            // SAFETY: as `at`, with `i % 4 == 0` on a 16-byte aligned allocation; the four
            // words are T's bits (T is 4 bytes). Global allocations convert with cvta.
            unsafe {
                core::arch::asm!(
                    "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; ld.global.v4.b32 {{{a}, {b}, {c}, {d}}}, [g]; }}",
                    p = in(reg64) self.ptr.add(i),
                    a = out(reg32) a,
                    b = out(reg32) b,
                    c = out(reg32) c,
                    d = out(reg32) d,
                    options(pure, readonly, nostack),
                );
                [a, b, c, d].map(|w| core::mem::transmute_copy(&w))
            }
        }
        #[cfg(not(target_arch = "nvptx64"))]
        {
            #[repr(C, align(16))]
            struct V<T>([T; 4]);
            // SAFETY: as `at`, and `i % 4 == 0` on an aligned allocation makes the load aligned.
            unsafe { (self.ptr.add(i) as *const V<T>).read().0 }
        }
    }

    /// Two consecutive elements starting at `i` (even), one 8-byte load when `T` is 4 bytes
    /// wide (device allocations are aligned).
    #[inline(always)]
    pub fn at2(self, i: usize) -> [T; 2] {
        #[cfg(not(target_arch = "nvptx64"))]
        if i + 2 > self.len || !i.is_multiple_of(2) {
            out_of_bounds("2-wide read", i, self.len);
        }
        #[repr(C, align(8))]
        struct V<T>([T; 2]);
        // SAFETY: as `at`, and `i % 2 == 0` on an aligned allocation makes the load aligned.
        unsafe { (self.ptr.add(i) as *const V<T>).read().0 }
    }

    /// A view starting `offset` elements in (for per-layer or per-expert slices).
    #[inline(always)]
    pub fn offset(self, offset: usize) -> Self {
        #[cfg(not(target_arch = "nvptx64"))]
        if offset > self.len {
            out_of_bounds("offset", offset, self.len);
        }
        In {
            // SAFETY: stays within (or one past) the allocation, checked on the host.
            ptr: unsafe { self.ptr.add(offset) },
            #[cfg(not(target_arch = "nvptx64"))]
            len: self.len - offset,
            _t: PhantomData,
        }
    }
}

impl<T: Copy> In<T> {
    /// Host side: the bytes the view covers (for emulated bulk copies).
    #[cfg(not(target_arch = "nvptx64"))]
    pub(crate) fn byte_len(self) -> usize {
        self.len * core::mem::size_of::<T>()
    }

    /// The generic address of element 0 (what PTX instructions that take an address want).
    #[inline(always)]
    pub fn address(self) -> u64 {
        self.ptr as u64
    }

    /// The same bytes viewed as elements of another type (e.g. pairs of bf16 as `u32`, so one
    /// 16-byte load fetches eight of them). The offset must be aligned for `U`.
    #[inline(always)]
    pub fn cast<U: Copy>(self) -> In<U> {
        In {
            ptr: self.ptr as *const U,
            #[cfg(not(target_arch = "nvptx64"))]
            len: self.len * core::mem::size_of::<T>() / core::mem::size_of::<U>(),
            _t: PhantomData,
        }
    }
}

impl<T: Copy> Out<T> {
    /// Host side: a writable view of `len` elements at `ptr`.
    ///
    /// # Safety
    /// As `In::from_raw_parts`; kernels decide which thread writes which element.
    #[cfg(not(target_arch = "nvptx64"))]
    pub unsafe fn from_raw_parts(ptr: *mut T, len: usize) -> Self {
        Out {
            ptr,
            len,
            _t: PhantomData,
        }
    }

    #[cfg(not(target_arch = "nvptx64"))]
    pub fn from_slice(s: &mut [T]) -> Self {
        Out {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _t: PhantomData,
        }
    }

    #[inline(always)]
    pub fn at(self, i: usize) -> T {
        #[cfg(not(target_arch = "nvptx64"))]
        if i >= self.len {
            out_of_bounds("read", i, self.len);
        }
        // SAFETY: see `In::at`.
        unsafe { self.ptr.add(i).read() }
    }

    #[inline(always)]
    pub fn set(self, i: usize, v: T) {
        #[cfg(not(target_arch = "nvptx64"))]
        if i >= self.len {
            out_of_bounds("write", i, self.len);
        }
        // SAFETY: see `In::at`.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// Two consecutive elements at `i` (even) in one 8-byte store (`T` 4 bytes wide).
    #[inline(always)]
    pub fn set2(self, i: usize, v: [T; 2]) {
        #[cfg(not(target_arch = "nvptx64"))]
        if i + 2 > self.len || !i.is_multiple_of(2) {
            out_of_bounds("2-wide write", i, self.len);
        }
        // LLVM splits an 8-byte aggregate store into two 4-byte ones (seen in the GEMM
        // epilogue: half-filled 32-byte sectors), so on the device the pair goes as one
        // `st.global.v2.b32`.
        #[cfg(target_arch = "nvptx64")]
        {
            const { assert!(core::mem::size_of::<T>() == 4) };
            // SAFETY: as `set`, with `i` even on an 8-byte aligned allocation; T is 4 bytes,
            // so its bits are a u32. Global allocations' generic addresses convert with cvta.
            unsafe {
                let (a, b): (u32, u32) = (
                    core::mem::transmute_copy(&v[0]),
                    core::mem::transmute_copy(&v[1]),
                );
                core::arch::asm!(
                    "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.global.v2.b32 [g], {{{a}, {b}}}; }}",
                    p = in(reg64) self.ptr.add(i),
                    a = in(reg32) a,
                    b = in(reg32) b,
                    options(nostack),
                );
            }
        }
        #[cfg(not(target_arch = "nvptx64"))]
        {
            #[repr(C, align(8))]
            struct V<T>([T; 2]);
            // SAFETY: see `In::at2`.
            unsafe { (self.ptr.add(i) as *mut V<T>).write(V(v)) }
        }
    }

    /// Four consecutive elements at `i` (a multiple of 4) in one 16-byte store.
    #[inline(always)]
    pub fn set4(self, i: usize, v: [T; 4]) {
        #[cfg(not(target_arch = "nvptx64"))]
        if i + 4 > self.len || !i.is_multiple_of(4) {
            out_of_bounds("4-wide write", i, self.len);
        }
        // As `In::at4`: one `st.global.v4` on the device, whatever LLVM makes of the aggregate.
        #[cfg(target_arch = "nvptx64")]
        {
            const { assert!(core::mem::size_of::<T>() == 4) };
            // SAFETY: as `set`, with `i % 4 == 0` on a 16-byte aligned allocation.
            unsafe {
                let w: [u32; 4] = v.map(|e| core::mem::transmute_copy(&e));
                core::arch::asm!(
                    "{{ .reg .u64 g; cvta.to.global.u64 g, {p}; st.global.v4.b32 [g], {{{a}, {b}, {c}, {d}}}; }}",
                    p = in(reg64) self.ptr.add(i),
                    a = in(reg32) w[0],
                    b = in(reg32) w[1],
                    c = in(reg32) w[2],
                    d = in(reg32) w[3],
                    options(nostack),
                );
            }
        }
        #[cfg(not(target_arch = "nvptx64"))]
        {
            #[repr(C, align(16))]
            struct V<T>([T; 4]);
            // SAFETY: see `at4`.
            unsafe { (self.ptr.add(i) as *mut V<T>).write(V(v)) }
        }
    }

    #[inline(always)]
    pub fn offset(self, offset: usize) -> Self {
        #[cfg(not(target_arch = "nvptx64"))]
        if offset > self.len {
            out_of_bounds("offset", offset, self.len);
        }
        Out {
            // SAFETY: see `In::offset`.
            ptr: unsafe { self.ptr.add(offset) },
            #[cfg(not(target_arch = "nvptx64"))]
            len: self.len - offset,
            _t: PhantomData,
        }
    }

    /// The same bytes viewed as elements of another type (as `In::cast`).
    #[inline(always)]
    pub fn cast<U: Copy>(self) -> Out<U> {
        Out {
            ptr: self.ptr as *mut U,
            #[cfg(not(target_arch = "nvptx64"))]
            len: self.len * core::mem::size_of::<T>() / core::mem::size_of::<U>(),
            _t: PhantomData,
        }
    }

    /// The same memory, read-only.
    #[inline(always)]
    pub fn as_in(self) -> In<T> {
        In {
            ptr: self.ptr,
            #[cfg(not(target_arch = "nvptx64"))]
            len: self.len,
            _t: PhantomData,
        }
    }

    /// Raw address, for atomics.
    #[inline(always)]
    pub(crate) fn element_ptr(self, i: usize) -> *mut T {
        #[cfg(not(target_arch = "nvptx64"))]
        if i >= self.len {
            out_of_bounds("atomic", i, self.len);
        }
        // SAFETY: see `In::at`.
        unsafe { self.ptr.add(i) }
    }
}
