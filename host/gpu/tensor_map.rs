//! TMA tensor maps, and [`TmaMatrix`]: a bf16 matrix on the device together with the map its
//! kernels load it through. Tensor maps are the descriptors Hopper's tensor memory accelerator
//! reads to copy a tile of a matrix into shared memory. One describes a row-major bf16 matrix held in a [`Buffer`] and the
//! box (tile) a kernel loads; it lives in device memory (128 bytes), next to the buffer it
//! describes, and is made once per buffer (weights at upload, activations per prompt).
//!
//! On the GPU the driver encodes it (`cuTensorMapEncodeTiled`, 128-byte swizzle, zero fill out
//! of bounds); on the emulator it holds `TensorMap::emulated_2d`'s encoding of the same facts.
//! A map lives only inside the [`TmaMatrix`] that owns its buffer, so a kernel never reads
//! memory through a map that outlived or mismatches its buffer.

use super::buffer::Buffer;
use super::device::{Backend, Device};
use super::error::{GpuError, Result};
use super::launch::cuda_address;
use gpu_kernels::device::In;
use gpu_kernels::device::async_copy::{Swizzle, TensorMap};
use gpu_kernels::device::entry::{Arg, Launcher};

/// Words in a `CUtensorMap`.
const MAP_WORDS: usize = 16;

/// A TMA descriptor for `rows × cols` bf16 elements (row-major) of one buffer, loaded in boxes
/// with the 128-byte swizzle. Only [`TmaMatrix`] holds one, next to its buffer.
struct TensorMap2d {
    /// The descriptor in device memory (on the emulator: with slack to align it to 64 bytes).
    words: Buffer<u64>,
    /// Index of the first descriptor word in `words` (64-byte aligned).
    first: usize,
    rows: usize,
    cols: usize,
    box_rows: u32,
}

impl Device {
    /// A tensor map over the first `rows × cols` elements of `buf` (row-major bf16), read in
    /// boxes of `box_cols × box_rows` (`box_cols · 2 ≤ 128` bytes for the 128-byte swizzle).
    fn tensor_map_bf16(
        &self,
        buf: &Buffer<u16>,
        rows: usize,
        cols: usize,
        box_cols: u32,
        box_rows: u32,
    ) -> Result<TensorMap2d> {
        let bad = |why: String| GpuError::Input(format!("tensor map over {rows} × {cols}: {why}"));
        if rows == 0 || cols == 0 {
            return Err(bad("empty matrix".into()));
        }
        if rows * cols > buf.len() {
            return Err(bad(format!("the buffer holds only {} elements", buf.len())));
        }
        if !(cols * 2).is_multiple_of(16) {
            return Err(bad(
                "the row stride must be a multiple of 16 bytes (cols a multiple of 8)".into(),
            ));
        }
        if box_cols == 0 || box_cols * 2 > 128 || box_rows == 0 || box_rows > 256 {
            return Err(bad(format!("box {box_cols} × {box_rows} not allowed")));
        }
        let map = match self.backend() {
            Backend::Cuda(_) => {
                encode_cuda(cuda_address(self, buf)?, rows, cols, box_cols, box_rows)?
            }
            Backend::Emulator => TensorMap::emulated_2d(
                buf.identity() as u64,
                2,
                cols as u64,
                rows as u64,
                (cols * 2) as u64,
                box_cols,
                box_rows,
                Swizzle::B128,
            )
            .with_extent((buf.len() * 2) as u64),
        };
        // Device allocations are 256-byte aligned; the emulator's are 8-byte aligned, so it gets
        // a longer buffer and the map starts at its first 64-byte boundary.
        let slack = if self.is_cuda() { 0 } else { 7 };
        let mut words = self.alloc::<u64>(MAP_WORDS + slack, "tensor map")?;
        let first = (8 - (words.identity() / 8) % 8) % 8;
        let mut data = vec![0u64; MAP_WORDS + slack];
        data[first..first + MAP_WORDS].copy_from_slice(&map.0);
        words.write(&data)?;
        Ok(TensorMap2d {
            words,
            first,
            rows,
            cols,
            box_rows,
        })
    }
}

/// A tensor map passed to a kernel.
pub(crate) struct MapArg<'a>(&'a TensorMap2d);

// SAFETY: `cuda` gives the device address of the 128-byte descriptor (a live allocation owned by
// the map, 256-byte aligned); `emulated` a view of exactly one `TensorMap` at a 64-byte aligned
// offset of the map's host storage, alive for the synchronous emulated launch.
unsafe impl Arg<Device, In<TensorMap>> for MapArg<'_> {
    fn cuda(&self, dev: &Device) -> Result<u64> {
        cuda_address(dev, &self.0.words)
    }
    fn emulated(&self, dev: &Device) -> Result<In<TensorMap>> {
        debug_assert!(dev.is_emulator());
        let words = self.0.words.host_in()?.offset(self.0.first);
        Ok(words.cast::<TensorMap>())
    }
}

/// `cuTensorMapEncodeTiled` for a row-major bf16 matrix at device address `address`.
fn encode_cuda(
    address: u64,
    rows: usize,
    cols: usize,
    box_cols: u32,
    box_rows: u32,
) -> Result<TensorMap> {
    use cudarc::driver::sys;
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    let dims = [cols as u64, rows as u64];
    let strides = [(cols * 2) as u64];
    let boxes = [box_cols, box_rows];
    let element_strides = [1u32, 1];
    // SAFETY: every pointer refers to a live local array of the rank the call is told (2), and
    // `map` is a writable CUtensorMap; the driver only reads the arrays and writes `map`.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            address as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(GpuError::Driver {
            op: format!("encoding a tensor map ({rows} × {cols}, box {box_cols} × {box_rows})"),
            message: format!("{status:?}"),
        });
    }
    // SAFETY: the call succeeded, so it initialised `map`.
    let map = unsafe { map.assume_init() };
    Ok(TensorMap(map.opaque))
}

/// Box of every kiln tensor map: 64 bf16 (one 128-byte swizzled row) × 128 rows, the tile of
/// the wgmma GEMMs and of flash attention.
pub const BOX: (u32, u32) = (64, 128);

/// A row-major bf16 matrix in device memory with the tensor map its kernels read it through
/// (box [`BOX`]), and optionally a second map in other boxes ([`TmaMatrix::with_second_box`]).
/// Owning them keeps the maps from outliving or mismatching their buffer.
pub struct TmaMatrix {
    data: Buffer<u16>,
    map: TensorMap2d,
    second: Option<TensorMap2d>,
}

impl Device {
    /// `data` as a `rows × cols` matrix (it may hold more elements; `cols` a multiple of 8).
    pub fn tma_matrix(&self, data: Buffer<u16>, rows: usize, cols: usize) -> Result<TmaMatrix> {
        self.tma_matrix_boxed(data, rows, cols, BOX.1)
    }

    /// As [`Device::tma_matrix`], read in boxes of `BOX.0 × box_rows` (at most 256 rows).
    pub fn tma_matrix_boxed(
        &self,
        data: Buffer<u16>,
        rows: usize,
        cols: usize,
        box_rows: u32,
    ) -> Result<TmaMatrix> {
        let map = self.tensor_map_bf16(&data, rows, cols, BOX.0, box_rows)?;
        Ok(TmaMatrix {
            data,
            map,
            second: None,
        })
    }

    /// A zero-filled `rows × cols` matrix.
    pub fn tma_zeros(&self, rows: usize, cols: usize, what: &str) -> Result<TmaMatrix> {
        let data = self.alloc::<u16>(rows * cols, what)?;
        self.tma_matrix(data, rows, cols)
    }

    /// A zero-filled `rows × cols` matrix read in boxes of `BOX.0 × box_rows`.
    pub fn tma_zeros_boxed(
        &self,
        rows: usize,
        cols: usize,
        box_rows: u32,
        what: &str,
    ) -> Result<TmaMatrix> {
        let data = self.alloc::<u16>(rows * cols, what)?;
        self.tma_matrix_boxed(data, rows, cols, box_rows)
    }
}

impl TmaMatrix {
    pub fn rows(&self) -> usize {
        self.map.rows
    }
    pub fn cols(&self) -> usize {
        self.map.cols
    }
    /// Rows of the map's box (`BOX.1` unless made with [`Device::tma_matrix_boxed`]).
    pub fn box_rows(&self) -> u32 {
        self.map.box_rows
    }
    /// The same matrix read through a new map with boxes of `BOX.0 × box_rows`.
    pub fn reboxed(self, dev: &Device, box_rows: u32) -> Result<TmaMatrix> {
        let (rows, cols) = (self.rows(), self.cols());
        dev.tma_matrix_boxed(self.data, rows, cols, box_rows)
    }
    /// The matrix with a second map beside its own, in boxes of `BOX.0 × box_rows`, for
    /// kernels that read it in either of two tiles (the MoE router's K-segmented GEMM).
    pub fn with_second_box(mut self, dev: &Device, box_rows: u32) -> Result<TmaMatrix> {
        let (rows, cols) = (self.rows(), self.cols());
        self.second = Some(dev.tensor_map_bf16(&self.data, rows, cols, BOX.0, box_rows)?);
        Ok(self)
    }
    /// The map in boxes of `box_rows` rows, its own or the second, if it has one.
    pub(crate) fn map_boxed(&self, box_rows: u32) -> Option<MapArg<'_>> {
        [Some(&self.map), self.second.as_ref()]
            .into_iter()
            .flatten()
            .find(|m| m.box_rows == box_rows)
            .map(MapArg)
    }
    /// The elements (row-major bf16 bits).
    pub fn data(&self) -> &Buffer<u16> {
        &self.data
    }
    /// Sets every element to zero (the map stays valid: same buffer).
    pub fn zero(&mut self) -> Result<()> {
        self.data.zero()
    }
    /// Device bytes of the elements and of the tensor map beside them.
    pub fn bytes(&self) -> u64 {
        let second = self.second.as_ref().map_or(0, |m| m.words.bytes());
        self.data.bytes() + self.map.words.bytes() + second
    }
    /// The map as a kernel argument.
    pub(crate) fn map(&self) -> MapArg<'_> {
        MapArg(&self.map)
    }
    /// Fails (naming `kernel` and `what`) unless the matrix has `cols` columns and at least
    /// `rows` rows.
    pub(crate) fn check(
        &self,
        kernel: &'static str,
        what: &str,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if self.cols() == cols && self.rows() >= rows {
            return Ok(());
        }
        Err(GpuError::Shape {
            kernel,
            message: format!(
                "{what} is {} × {}, needs {cols} columns and at least {rows} rows",
                self.rows(),
                self.cols()
            ),
        })
    }
}
