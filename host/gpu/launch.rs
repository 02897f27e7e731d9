//! The one place where kernels are launched: `launch!` marshals arguments either into CUDA
//! kernel parameters or into the typed `In`/`Out` views the emulator passes to the same Rust
//! function. Launch wrappers (`ops/`) check every shape before they call it.

use super::buffer::{Element, Input, Output};
use super::device::CudaRuntime;
use super::error::{GpuError, Result};
use cudarc::driver::sys::CUfunction_attribute;
use gpu_kernels::device::emu;
use gpu_kernels::device::{Dim3, In, Out};
use std::ffi::c_void;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchConfig {
            grid: (blocks.max(1), 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }

    /// Enough `threads`-wide blocks to give each of `n` items a thread.
    pub fn covering(n: usize, threads: u32) -> Self {
        Self::linear(n.div_ceil(threads as usize) as u32, threads)
    }

    pub fn with_shared(mut self, bytes: u32) -> Self {
        self.shared_bytes = bytes;
        self
    }
}

/// A kernel parameter as the CUDA driver takes it.
#[derive(Clone, Copy)]
pub enum Param {
    Word(u32),
    Pointer(u64),
}

/// Something that can be passed to a kernel on either backend.
pub trait KernelArg {
    type Emulated: Copy + Send + Sync;
    fn param(&self, rt: &CudaRuntime) -> Result<Param>;
    fn emulated(&self) -> Result<Self::Emulated>;
}

impl KernelArg for u32 {
    type Emulated = u32;
    fn param(&self, _: &CudaRuntime) -> Result<Param> {
        Ok(Param::Word(*self))
    }
    fn emulated(&self) -> Result<u32> {
        Ok(*self)
    }
}

impl KernelArg for f32 {
    type Emulated = f32;
    fn param(&self, _: &CudaRuntime) -> Result<Param> {
        Ok(Param::Word(self.to_bits()))
    }
    fn emulated(&self) -> Result<f32> {
        Ok(*self)
    }
}

impl<T: Element> KernelArg for Input<'_, T> {
    type Emulated = In<T>;
    fn param(&self, rt: &CudaRuntime) -> Result<Param> {
        self.0.device_address(rt.stream()).map(Param::Pointer)
    }
    fn emulated(&self) -> Result<In<T>> {
        self.0.host_in()
    }
}

impl<T: Element> KernelArg for Output<'_, T> {
    type Emulated = Out<T>;
    fn param(&self, rt: &CudaRuntime) -> Result<Param> {
        self.0.device_address(rt.stream()).map(Param::Pointer)
    }
    fn emulated(&self) -> Result<Out<T>> {
        self.0.host_out()
    }
}

const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

impl CudaRuntime {
    /// Queues one launch on the stream.
    pub(crate) fn launch_raw(
        &self,
        kernel: &'static str,
        cfg: LaunchConfig,
        params: &[Param],
    ) -> Result<()> {
        let f = self.function(kernel)?;
        if cfg.shared_bytes > DEFAULT_SHARED_LIMIT {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_bytes as i32,
            )
            .map_err(|e| GpuError::driver(format!("raising {kernel}'s shared-memory limit"), e))?;
        }
        let mut values: Vec<u64> = params
            .iter()
            .map(|p| match *p {
                Param::Word(w) => w as u64,
                Param::Pointer(a) => a,
            })
            .collect();
        // The driver reads each parameter through a pointer to its value; words are read as
        // their low 4 bytes, which on little-endian x86-64 / aarch64 hosts is where they sit.
        let mut pointers: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: the parameters match the kernel's signature (the `launch!` macro builds them
        // from the same argument list as the emulated call, which the Rust compiler type-checks
        // against the kernel function), pointers are live device allocations whose lengths the
        // calling wrapper checked, and `values` outlives the call (the driver copies them).
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream().cu_stream(),
                &mut pointers,
            )
        }
        .map_err(|e| GpuError::driver(format!("launching {kernel}"), e))
    }
}

pub(crate) fn emulate(
    kernel: &'static str,
    cfg: LaunchConfig,
    body: impl Fn() + Sync,
) -> Result<()> {
    let dim = |(x, y, z)| Dim3::new(x, y, z);
    let emu_cfg = emu::LaunchConfig {
        grid: dim(cfg.grid),
        block: dim(cfg.block),
        dynamic_shared_bytes: cfg.shared_bytes,
    };
    emu::launch(emu_cfg, body).map_err(|e| GpuError::Emulator {
        kernel,
        message: e.0,
    })
}

/// `launch!(device, module::kernel, cfg, arg, ...)`: launches `gpu_kernels::module::kernel` on
/// the device's backend. Arguments are `buffer.input()`, `buffer.output()`, `u32` or `f32`.
macro_rules! launch {
    ($device:expr, $module:ident :: $kernel:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let device: &$crate::gpu::Device = $device;
        let cfg: $crate::gpu::LaunchConfig = $cfg;
        device.count_launch();
        match device.backend() {
            $crate::gpu::Backend::Cuda(rt) => {
                let params = [$($crate::gpu::launch::KernelArg::param(&$arg, rt)?),+];
                rt.launch_raw(stringify!($kernel), cfg, &params)
            }
            $crate::gpu::Backend::Emulator => {
                let args = ($($crate::gpu::launch::KernelArg::emulated(&$arg)?,)+);
                $crate::gpu::launch::emulate(stringify!($kernel), cfg, move || {
                    $crate::gpu::launch::call_with!(gpu_kernels::$module::$kernel, args, $($arg),+)
                })
            }
        }
    }};
}
pub(crate) use launch;

/// Calls `f` with the elements of the tuple `args`, one per listed argument.
macro_rules! call_with {
    ($f:path, $args:ident, $a0:expr) => {
        $f($args.0)
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr) => {
        $f($args.0, $args.1)
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr) => {
        $f($args.0, $args.1, $args.2)
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr) => {
        $f($args.0, $args.1, $args.2, $args.3)
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr) => {
        $f($args.0, $args.1, $args.2, $args.3, $args.4)
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr) => {
        $f($args.0, $args.1, $args.2, $args.3, $args.4, $args.5)
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr, $a6:expr) => {
        $f(
            $args.0, $args.1, $args.2, $args.3, $args.4, $args.5, $args.6,
        )
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr, $a6:expr, $a7:expr) => {
        $f(
            $args.0, $args.1, $args.2, $args.3, $args.4, $args.5, $args.6, $args.7,
        )
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr, $a6:expr, $a7:expr, $a8:expr) => {
        $f(
            $args.0, $args.1, $args.2, $args.3, $args.4, $args.5, $args.6, $args.7, $args.8,
        )
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr, $a6:expr, $a7:expr, $a8:expr, $a9:expr) => {
        $f(
            $args.0, $args.1, $args.2, $args.3, $args.4, $args.5, $args.6, $args.7, $args.8,
            $args.9,
        )
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr, $a6:expr, $a7:expr, $a8:expr, $a9:expr, $a10:expr) => {
        $f(
            $args.0, $args.1, $args.2, $args.3, $args.4, $args.5, $args.6, $args.7, $args.8,
            $args.9, $args.10,
        )
    };
    ($f:path, $args:ident, $a0:expr, $a1:expr, $a2:expr, $a3:expr, $a4:expr, $a5:expr, $a6:expr, $a7:expr, $a8:expr, $a9:expr, $a10:expr, $a11:expr) => {
        $f(
            $args.0, $args.1, $args.2, $args.3, $args.4, $args.5, $args.6, $args.7, $args.8,
            $args.9, $args.10, $args.11,
        )
    };
}
pub(crate) use call_with;
