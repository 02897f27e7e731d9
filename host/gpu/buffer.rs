//! Device buffers: a `CudaSlice` on the GPU, a heap block on the emulator. Both behave like
//! device memory: kernels read and write them through `In`/`Out` views while the host holds
//! only shared references, and the host copies data in and out explicitly.

use super::device::{Backend, Device};
use super::error::{GpuError, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};
use gpu_kernels::device::{In, Out};
use std::cell::UnsafeCell;

/// Element types that can live in a buffer.
pub trait Element: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {}
impl<T: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static> Element for T {}

pub struct Buffer<T: Element> {
    storage: Storage<T>,
    /// Elements visible to kernels and the host (CUDA allocations are at least 1 element).
    len: usize,
    /// The address of element 0 (device or host): identifies the allocation (tensor maps
    /// record which buffer they describe).
    address: usize,
}

enum Storage<T: Element> {
    Cuda(CudaSlice<T>),
    /// `UnsafeCell`: emulated kernels write through `Out` views while the host holds `&Buffer`,
    /// exactly as CUDA kernels write device memory.
    Host(Box<[UnsafeCell<T>]>),
}

// SAFETY: the host storage is only touched by emulated kernels (whose concurrency is the
// kernel's contract, as on a GPU) or by the host through `&mut self` / after a launch returns.
unsafe impl<T: Element> Sync for Buffer<T> {}
unsafe impl<T: Element> Send for Buffer<T> {}

fn is_oom(e: &cudarc::driver::DriverError) -> bool {
    e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
}

impl Device {
    /// A zero-filled buffer of `len` elements; `what` names it in an out-of-memory error.
    pub fn alloc<T: Element>(&self, len: usize, what: &str) -> Result<Buffer<T>> {
        let storage = match self.backend() {
            Backend::Cuda(rt) => {
                Storage::Cuda(rt.stream().alloc_zeros::<T>(len.max(1)).map_err(|e| {
                    if is_oom(&e) {
                        GpuError::OutOfMemory {
                            what: what.into(),
                            bytes: len * size_of::<T>(),
                        }
                    } else {
                        GpuError::driver(format!("allocating {what}"), e)
                    }
                })?)
            }
            Backend::Emulator => Storage::Host(
                (0..len.max(1))
                    .map(|_| UnsafeCell::new(T::default()))
                    .collect(),
            ),
        };
        let address = match (&storage, self.backend()) {
            (Storage::Cuda(slice), Backend::Cuda(rt)) => slice.device_ptr(rt.stream()).0 as usize,
            (Storage::Host(h), _) => h.as_ptr() as usize,
            (Storage::Cuda(_), Backend::Emulator) => unreachable!("CUDA storage on the emulator"),
        };
        Ok(Buffer {
            storage,
            len,
            address,
        })
    }

    /// A buffer holding a copy of `data`.
    pub fn upload<T: Element>(&self, data: &[T], what: &str) -> Result<Buffer<T>> {
        let mut buf = self.alloc(data.len(), what)?;
        buf.write(data)?;
        Ok(buf)
    }
}

impl<T: Element> Buffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the allocation holds (CUDA allocations hold at least one element).
    pub fn bytes(&self) -> u64 {
        (self.len.max(1) * size_of::<T>()) as u64
    }

    /// The address of element 0 (device or host): identifies the allocation.
    pub(crate) fn identity(&self) -> usize {
        self.address
    }

    /// Overwrites the first `data.len()` elements.
    pub fn write(&mut self, data: &[T]) -> Result<()> {
        if data.len() > self.len() {
            return Err(GpuError::Shape {
                kernel: "upload",
                message: format!("{} elements into a buffer of {}", data.len(), self.len()),
            });
        }
        match &mut self.storage {
            Storage::Cuda(s) => {
                let stream = s.stream().clone();
                let mut view = s.slice_mut(..data.len());
                stream
                    .memcpy_htod(data, &mut view)
                    .map_err(|e| GpuError::driver("copying to the device", e))
            }
            Storage::Host(h) => {
                for (cell, v) in h.iter_mut().zip(data) {
                    *cell.get_mut() = *v;
                }
                Ok(())
            }
        }
    }

    /// Sets every element to zero (a device memset, queued on the stream).
    pub fn zero(&mut self) -> Result<()> {
        match &mut self.storage {
            Storage::Cuda(s) => {
                let stream = s.stream().clone();
                stream
                    .memset_zeros(s)
                    .map_err(|e| GpuError::driver("zeroing a buffer", e))
            }
            Storage::Host(h) => {
                for cell in h.iter_mut() {
                    *cell.get_mut() = T::default();
                }
                Ok(())
            }
        }
    }

    /// Copies `len` elements from `src[src_offset..]` to `self[dst_offset..]` on the device.
    pub fn copy_from(
        &mut self,
        src: &Buffer<T>,
        src_offset: usize,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        if src_offset + len > src.len || dst_offset + len > self.len {
            return Err(GpuError::Shape {
                kernel: "copy",
                message: format!(
                    "{len} elements from offset {src_offset} of {} into offset {dst_offset} of {}",
                    src.len, self.len
                ),
            });
        }
        match (&mut self.storage, &src.storage) {
            (Storage::Cuda(d), Storage::Cuda(s)) => {
                let stream = d.stream().clone();
                let from = s.slice(src_offset..src_offset + len);
                let mut to = d.slice_mut(dst_offset..dst_offset + len);
                stream
                    .memcpy_dtod(&from, &mut to)
                    .map_err(|e| GpuError::driver("copying on the device", e))
            }
            (Storage::Host(d), Storage::Host(s)) => {
                for i in 0..len {
                    // SAFETY: no emulated launch is running (they are synchronous).
                    *d[dst_offset + i].get_mut() = unsafe { *s[src_offset + i].get() };
                }
                Ok(())
            }
            _ => Err(GpuError::WrongBackend {
                buffer: "mixed",
                device: "copy",
            }),
        }
    }

    /// Copies the buffer back to the host (waits for queued work first).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match &self.storage {
            Storage::Cuda(s) => {
                let mut v = s
                    .stream()
                    .clone_dtoh(s)
                    .map_err(|e| GpuError::driver("copying from the device", e))?;
                v.truncate(self.len);
                Ok(v)
            }
            // SAFETY: no emulated launch is running (launches are synchronous on the emulator).
            Storage::Host(h) => Ok(h[..self.len].iter().map(|c| unsafe { *c.get() }).collect()),
        }
    }

    /// A kernel argument that reads this buffer (a kernel parameter `In<T>`). Crate-private:
    /// only the `ops` wrappers, which check lengths first, hand buffers to kernels.
    pub(crate) fn input(&self) -> Input<'_, T> {
        Input(self)
    }

    /// `Some(buffer)` or nothing as a kernel argument `In<T>` (see [`MaybeInput`]).
    pub(crate) fn maybe_input(buffer: Option<&Self>) -> MaybeInput<'_, T> {
        MaybeInput(buffer)
    }

    /// A kernel argument that writes this buffer (a kernel parameter `Out<T>`).
    pub(crate) fn output(&self) -> Output<'_, T> {
        Output(self)
    }

    pub(crate) fn device_address(&self, stream: &cudarc::driver::CudaStream) -> Result<u64> {
        match &self.storage {
            Storage::Cuda(s) => Ok(s.device_ptr(stream).0),
            Storage::Host(_) => Err(GpuError::WrongBackend {
                buffer: "emulator",
                device: "cuda",
            }),
        }
    }

    pub(crate) fn host_in(&self) -> Result<In<T>> {
        match &self.storage {
            // SAFETY: the allocation lives as long as `self`, which outlives the launch that
            // borrows it; writes happen only through `Out` views during that launch.
            Storage::Host(h) => Ok(unsafe { In::from_raw_parts(h.as_ptr() as *const T, self.len) }),
            Storage::Cuda(_) => Err(GpuError::WrongBackend {
                buffer: "cuda",
                device: "emulator",
            }),
        }
    }

    pub(crate) fn host_out(&self) -> Result<Out<T>> {
        match &self.storage {
            // SAFETY: as `host_in`; `UnsafeCell` makes writes through a shared borrow sound.
            Storage::Host(h) => {
                Ok(unsafe { Out::from_raw_parts(UnsafeCell::raw_get(h.as_ptr()), self.len) })
            }
            Storage::Cuda(_) => Err(GpuError::WrongBackend {
                buffer: "cuda",
                device: "emulator",
            }),
        }
    }
}

/// A buffer passed to a kernel as `In<T>` (see `launch.rs`).
pub struct Input<'a, T: Element>(pub(crate) &'a Buffer<T>);
/// A buffer passed to a kernel as `Out<T>`.
pub struct Output<'a, T: Element>(pub(crate) &'a Buffer<T>);
/// An optional buffer passed as `In<T>`: without one (a parameter the launch's flags tell the
/// kernel not to read), a null pointer on the GPU and an empty view on the emulator, where any
/// read is an out-of-bounds error instead of a read of some other buffer.
pub struct MaybeInput<'a, T: Element>(pub(crate) Option<&'a Buffer<T>>);
