//! The one place where kernels are launched. Every `kernel!` in gpu-kernels comes with a typed
//! launcher, `gpu_kernels::FAMILY::NAME::launch(dev, cfg, args...)`; this file makes a
//! [`Device`] its backend: CUDA parameters and `cuLaunchKernel` on the device's stream, or the
//! emulator running the very same Rust function. Arguments are `buffer.input()`,
//! `buffer.output()` (kernel parameters `In<T>` / `Out<T>`), `u32`, `i32` or `f32`; the compiler
//! checks them against the kernel's signature. Only the wrappers in `ops/` launch: they check
//! every shape and length first, and only this crate can make the pointer arguments.

use super::buffer::{Element, Input, MaybeInput, Output};
use super::device::{Backend, CudaRuntime, Device};
use super::error::{GpuError, Result};
use cudarc::driver::CudaFunction;
use cudarc::driver::sys::{self, CUfunction_attribute};
use gpu_kernels::device::entry::{Arg, Entry, Launcher};
use gpu_kernels::device::{Dim3, In, Out, emu};
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

// SAFETY: kernels can only be given pointers through `Input`/`Output`, which only this crate
// can make (`Buffer::input`/`output` are crate-private), and the crate makes them only in the
// `ops` wrappers, after checking every buffer against the index range the kernel touches.
unsafe impl Launcher for Device {
    type Config = LaunchConfig;
    type Error = GpuError;

    fn is_emulator(&self) -> bool {
        matches!(self.backend(), Backend::Emulator)
    }

    fn launch_cuda(&self, entry: &'static Entry, cfg: LaunchConfig, params: &[u64]) -> Result<()> {
        check_block_size(entry, &cfg)?;
        let Backend::Cuda(rt) = self.backend() else {
            return Err(GpuError::WrongBackend {
                buffer: "cuda",
                device: "emulator",
            });
        };
        self.count_launch();
        rt.launch_raw(entry.name, cfg, params)
    }

    fn launch_emulated(
        &self,
        entry: &'static Entry,
        cfg: LaunchConfig,
        kernel: &(dyn Fn() + Sync),
    ) -> Result<()> {
        check_block_size(entry, &cfg)?;
        self.count_launch();
        let dim = |(x, y, z)| Dim3::new(x, y, z);
        let emu_cfg = emu::LaunchConfig {
            grid: dim(cfg.grid),
            block: dim(cfg.block),
            dynamic_shared_bytes: cfg.shared_bytes,
        };
        emu::launch_cluster(emu_cfg, entry.cluster.unwrap_or(1), kernel).map_err(|e| {
            GpuError::Emulator {
                kernel: entry.name,
                message: e.0,
            }
        })
    }
}

/// A kernel declared for one block size (`kernel! { threads = N; ... }`, compiled with
/// `.maxntid N`) cannot run in another: the driver would refuse a larger block, and a smaller
/// one would leave its warpgroup roles unfilled. A kernel declared for clusters of `C` blocks
/// (`.reqnctapercluster C, 1, 1`) needs a grid x that is a multiple of `C`: the driver refuses
/// anything else with a bare "invalid argument" (and the emulator with its own message), so
/// the launch is refused here first, naming the kernel.
fn check_block_size(entry: &'static Entry, cfg: &LaunchConfig) -> Result<()> {
    let (x, y, z) = cfg.block;
    let threads = u64::from(x) * u64::from(y) * u64::from(z);
    if let Some(want) = entry.threads
        && (threads != u64::from(want) || y != 1 || z != 1)
    {
        return Err(GpuError::Shape {
            kernel: entry.name,
            message: format!(
                "blocks of ({x}, {y}, {z}) threads; the kernel is built for ({want}, 1, 1)"
            ),
        });
    }
    if let Some(c) = entry.cluster
        && !cfg.grid.0.is_multiple_of(c)
    {
        let (gx, gy, gz) = cfg.grid;
        return Err(GpuError::Shape {
            kernel: entry.name,
            message: format!(
                "a grid of ({gx}, {gy}, {gz}) blocks; the kernel runs in clusters of {c} blocks \
                 along x, so grid x must be a multiple of {c}"
            ),
        });
    }
    Ok(())
}

pub(crate) fn cuda_address<T: Element>(dev: &Device, buf: &super::Buffer<T>) -> Result<u64> {
    match dev.backend() {
        Backend::Cuda(rt) => buf.device_address(rt.stream()),
        Backend::Emulator => Err(GpuError::WrongBackend {
            buffer: "emulator",
            device: "cuda",
        }),
    }
}

// SAFETY: `cuda` gives the address of the buffer's live device allocation (an error for a
// buffer of the other backend); `emulated` a view of its host storage, which the borrow in
// `Input` keeps alive for the (synchronous) emulated launch.
unsafe impl<T: Element> Arg<Device, In<T>> for Input<'_, T> {
    fn cuda(&self, dev: &Device) -> Result<u64> {
        cuda_address(dev, self.0)
    }
    fn emulated(&self, _: &Device) -> Result<In<T>> {
        self.0.host_in()
    }
}

// SAFETY: with a buffer, as `Input`; without, a null pointer (a read faults on the GPU, which
// compute-sanitizer names) and an empty view (a read is an emulator error): never another
// allocation's memory.
unsafe impl<T: Element> Arg<Device, In<T>> for MaybeInput<'_, T> {
    fn cuda(&self, dev: &Device) -> Result<u64> {
        self.0.map_or(Ok(0), |b| cuda_address(dev, b))
    }
    fn emulated(&self, _: &Device) -> Result<In<T>> {
        self.0.map_or(Ok(In::from_slice(&[])), |b| b.host_in())
    }
}

// SAFETY: as for `Input`.
unsafe impl<T: Element> Arg<Device, Out<T>> for Output<'_, T> {
    fn cuda(&self, dev: &Device) -> Result<u64> {
        cuda_address(dev, self.0)
    }
    fn emulated(&self, _: &Device) -> Result<Out<T>> {
        self.0.host_out()
    }
}

const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

impl CudaRuntime {
    /// `cuLaunchKernelEx`'s configuration of `cfg` on this runtime's stream with one
    /// attribute (which must outlive the call the configuration is given to).
    fn launch_config(
        &self,
        cfg: LaunchConfig,
        attr: &mut sys::CUlaunchAttribute,
    ) -> sys::CUlaunchConfig {
        sys::CUlaunchConfig {
            gridDimX: cfg.grid.0,
            gridDimY: cfg.grid.1,
            gridDimZ: cfg.grid.2,
            blockDimX: cfg.block.0,
            blockDimY: cfg.block.1,
            blockDimZ: cfg.block.2,
            sharedMemBytes: cfg.shared_bytes,
            hStream: self.stream().cu_stream(),
            attrs: attr,
            numAttrs: 1,
        }
    }

    /// `kernel`'s function, allowed `shared` bytes of dynamic shared memory.
    fn function_with_shared(&self, kernel: &'static str, shared: u32) -> Result<&CudaFunction> {
        let f = self.function(kernel)?;
        if shared > DEFAULT_SHARED_LIMIT {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared as i32,
            )
            .map_err(|e| GpuError::driver(format!("raising {kernel}'s shared-memory limit"), e))?;
        }
        Ok(f)
    }

    /// How many clusters of `kernel` (declared with a cluster size) fit on the GPU at once in
    /// blocks of `cfg`'s size and shared memory (`cuOccupancyMaxActiveClusters`, with the
    /// kernel's cluster size as a launch attribute: without it the H200 answered 0). A GPC with
    /// an odd number of free multiprocessors cannot host a whole cluster of two on all of them.
    /// Asked once per kernel, block size and shared memory; later calls get the same answer.
    /// The context is made current on the calling thread first: the query takes it from there,
    /// and a thread that has made no other driver call yet (a test's, a server's worker) has
    /// none (`CUDA_ERROR_INVALID_CONTEXT` under compute-sanitizer). A failed query, or an answer
    /// of no cluster at all, is an error naming the kernel: never a launch of one cluster.
    pub(crate) fn max_active_clusters(
        &self,
        kernel: &'static str,
        cfg: LaunchConfig,
    ) -> Result<u32> {
        let threads = cfg.block.0 * cfg.block.1 * cfg.block.2;
        let key = (kernel, threads, cfg.shared_bytes);
        let cached = self
            .cluster_fit
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied());
        if let Some(fit) = cached {
            return Ok(fit);
        }
        let op = || format!("asking how many {kernel} clusters fit");
        self.context()
            .bind_to_thread()
            .map_err(|e| GpuError::driver(format!("{} (making the context current)", op()), e))?;
        let f = self.function_with_shared(kernel, cfg.shared_bytes)?;
        let size = gpu_kernels::device::entry::cluster_size(kernel);
        // SAFETY: a plain-data union; every bit pattern is valid, and `clusterDim` is set next.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.clusterDim.x = size;
        value.clusterDim.y = 1;
        value.clusterDim.z = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
            pad: [0; 4],
            value,
        };
        let config = self.launch_config(cfg, &mut attr);
        let mut clusters = 0i32;
        // SAFETY: `config` is fully initialised and its one attribute (the kernel's compiled-in
        // cluster size, which the driver requires to match) lives across the call; the
        // function belongs to this runtime's context, current on this thread (above); the
        // driver writes one int to `clusters`.
        let status =
            unsafe { sys::cuOccupancyMaxActiveClusters(&mut clusters, f.cu_function(), &config) };
        if status != sys::CUresult::CUDA_SUCCESS {
            return Err(GpuError::driver(op(), cudarc::driver::DriverError(status)));
        }
        let fit = u32::try_from(clusters).unwrap_or(0);
        if fit == 0 {
            return Err(GpuError::Driver {
                op: op(),
                message: format!(
                    "the driver says no cluster of {size} blocks of {threads} threads with {} \
                     bytes of shared memory fits (answer {clusters})",
                    cfg.shared_bytes
                ),
            });
        }
        if let Ok(mut m) = self.cluster_fit.lock() {
            m.insert(key, fit);
        }
        Ok(fit)
    }

    /// Queues one launch of `kernel` on the stream; `params` one slot per kernel parameter.
    fn launch_raw(&self, kernel: &'static str, cfg: LaunchConfig, params: &[u64]) -> Result<()> {
        let f = self.function_with_shared(kernel, cfg.shared_bytes)?;
        let mut values = params.to_vec();
        // The driver reads each parameter through a pointer to its value; 32-bit parameters are
        // read as their low 4 bytes, which on little-endian x86-64 / aarch64 hosts is where
        // they sit.
        let mut pointers: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: `params` has one slot per parameter of `kernel`, each made by the `Arg` impl
        // for that parameter's type (the kernel's `launch`, generated from its signature by
        // `kernel!`); pointers are live device allocations whose lengths the calling wrapper
        // checked (see `Launcher for Device`); `values` outlives the call (the driver copies).
        if self.pdl {
            return self.launch_programmatic(kernel, f.cu_function(), cfg, &mut pointers);
        }
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

    /// As `launch_raw`'s plain launch, with programmatic stream serialization: the driver may
    /// schedule this grid's blocks before the previous kernel on the stream has completed.
    /// Safe because every kernel's entry first waits for that completion
    /// (`device::grid_dependency_wait`, emitted by `kernel!`); what it saves is the gap between
    /// one kernel's end and the next one's start: measured on the H200 at 30b dims, full depth,
    /// +4.4% tokens/s at N = 512, +1.5% at 2048, +0.9% at 4096 (NOTES, session 9). On by
    /// default; `KILN_PDL=0` launches plainly.
    fn launch_programmatic(
        &self,
        kernel: &'static str,
        f: sys::CUfunction,
        cfg: LaunchConfig,
        pointers: &mut [*mut c_void],
    ) -> Result<()> {
        // SAFETY: a plain-data union; every field but the one set below is left zero.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = self.launch_config(cfg, &mut attr);
        // SAFETY: as `launch_raw`'s launch (the same function, parameters and stream); `config`
        // and `attr` outlive the call, which copies them.
        let status = unsafe {
            sys::cuLaunchKernelEx(&config, f, pointers.as_mut_ptr(), std::ptr::null_mut())
        };
        if status != sys::CUresult::CUDA_SUCCESS {
            return Err(GpuError::driver(
                format!("launching {kernel} (programmatic dependent launch)"),
                cudarc::driver::DriverError(status),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_kernels::device::entry::entries;

    #[test]
    fn a_kernel_built_for_one_block_size_refuses_any_other() {
        let fixed = entries()
            .into_iter()
            .find(|e| e.name == "flash_attention_hd128")
            .expect("flash_attention_hd128 is registered");
        let want = fixed
            .threads
            .expect("flash attention declares its block size");
        let cfg = |block| LaunchConfig {
            grid: (1, 1, 1),
            block,
            shared_bytes: 0,
        };
        assert!(check_block_size(fixed, &cfg((want, 1, 1))).is_ok());
        for block in [(want - 128, 1, 1), (want + 32, 1, 1), (want / 3, 3, 1)] {
            let err = check_block_size(fixed, &cfg(block)).expect_err("wrong block size");
            let msg = err.to_string();
            assert!(msg.contains(&format!("built for ({want}, 1, 1)")), "{msg}");
        }
        // Kernels without a declared size take any block.
        let free = entries()
            .into_iter()
            .find(|e| e.threads.is_none())
            .expect("some kernel has no fixed size");
        assert!(check_block_size(free, &cfg((32, 2, 1))).is_ok());
    }

    #[test]
    fn a_cluster_kernel_refuses_a_grid_that_is_not_whole_clusters() {
        let clustered = entries()
            .into_iter()
            .find(|e| e.cluster.is_some())
            .expect("some kernel declares a cluster size");
        let (threads, c) = (clustered.threads.unwrap(), clustered.cluster.unwrap());
        let cfg = |grid| LaunchConfig {
            grid,
            block: (threads, 1, 1),
            shared_bytes: 0,
        };
        for grid in [(c, 1, 1), (3 * c, 2, 1), (c, 5, 3)] {
            assert!(check_block_size(clustered, &cfg(grid)).is_ok(), "{grid:?}");
        }
        for grid in [(c + 1, 1, 1), (1, c, 1), (2 * c - 1, 1, 1)] {
            let msg = check_block_size(clustered, &cfg(grid))
                .expect_err("grid x not a multiple of the cluster size")
                .to_string();
            assert!(
                msg.contains(&format!("grid x must be a multiple of {c}"))
                    && msg.contains(clustered.name),
                "{msg}"
            );
        }
        // The block size is still checked first.
        let msg = check_block_size(
            clustered,
            &LaunchConfig {
                grid: (c, 1, 1),
                block: (threads + 32, 1, 1),
                shared_bytes: 0,
            },
        )
        .expect_err("wrong block size")
        .to_string();
        assert!(msg.contains("built for"), "{msg}");
    }
}
