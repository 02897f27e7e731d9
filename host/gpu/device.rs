//! The device a pipeline runs on: a CUDA GPU (one context, one stream, the kernel PTX loaded
//! once per process) or the CPU emulator that runs the same kernels for tests.

use super::error::{GpuError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, sys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The PTX of every kernel in gpu-kernels, built by build.rs for sm_90.
pub const KERNELS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// Names a PTX file to load instead of the built-in one: for comparing kernel variants in one
/// GPU session (benches). The launches stay those of this build, so the file must come from
/// the same kernel signatures and launch geometry, with only kernel bodies changed.
pub const PTX_OVERRIDE_VAR: &str = "KILN_KERNELS_PTX";

/// The kernel PTX, where it came from, and whether that is the override.
fn kernels_ptx() -> Result<(String, String, bool)> {
    match std::env::var_os(PTX_OVERRIDE_VAR) {
        None => Ok((KERNELS_PTX.to_string(), "built in".into(), false)),
        Some(path) => {
            let shown = format!("{PTX_OVERRIDE_VAR}={}", path.to_string_lossy());
            let ptx = std::fs::read_to_string(&path).map_err(|e| GpuError::Driver {
                op: format!("reading {shown}"),
                message: e.to_string(),
            })?;
            Ok((ptx, shown, true))
        }
    }
}

/// What [`Device::multiprocessors`] reports for the emulator.
pub const EMULATED_MULTIPROCESSORS: u32 = 3;

/// A loaded CUDA context with kiln's module.
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    multiprocessors: u32,
    /// Launch with programmatic stream serialization (on unless `KILN_PDL=0`; see `launch.rs`).
    pub(super) pdl: bool,
    /// `max_active_clusters` answers by (kernel, threads, shared bytes): asked once, not on
    /// every launch of a paired GEMM. Only answers of at least one cluster are kept.
    pub(super) cluster_fit: std::sync::Mutex<HashMap<(&'static str, u32, u32), u32>>,
}

/// Set to 0 to launch kernels without programmatic dependent launch (see `launch.rs`): for
/// measuring what it saves, or a driver that refuses it.
pub const PDL_VAR: &str = "KILN_PDL";

impl CudaRuntime {
    fn open() -> Result<Self> {
        if KERNELS_PTX.is_empty() {
            return Err(GpuError::NoKernels);
        }
        // SAFETY: only probes whether the driver library can be loaded; without this check the
        // first driver call panics inside cudarc when libcuda is absent.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| GpuError::NoDevice(e.to_string()))?;
        if count < 1 {
            return Err(GpuError::NoDevice("the driver reports no devices".into()));
        }
        let ctx = CudaContext::new(0).map_err(|e| GpuError::NoDevice(e.to_string()))?;
        // One stream orders every launch and copy, so cudarc's cross-stream event tracking
        // would only add overhead.
        // SAFETY: called before any buffer or stream exists in this context.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| GpuError::driver("reading the multiprocessor count", e))?;
        let (ptx, source, overridden) = kernels_ptx()?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| GpuError::driver(format!("loading the kernel PTX ({source})"), e))?;
        let mut functions = HashMap::new();
        // Every kernel declared with `kernel!` (build.rs checked each is in the PTX).
        // (An override PTX may predate some kernels: those are left out, and launching one
        // fails with "no such kernel in the loaded PTX".)
        for entry in gpu_kernels::device::entry::entries() {
            match module.load_function(entry.name) {
                Ok(f) => {
                    functions.insert(entry.name, f);
                }
                Err(_) if overridden => {}
                Err(e) => {
                    return Err(GpuError::driver(
                        format!("loading kernel {}", entry.name),
                        e,
                    ));
                }
            }
        }
        Ok(CudaRuntime {
            stream: ctx.default_stream(),
            ctx,
            _module: module,
            functions,
            name,
            multiprocessors: multiprocessors.max(1) as u32,
            pdl: std::env::var(PDL_VAR).map_or(true, |v| v != "0"),
            cluster_fit: Default::default(),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(crate) fn function(&self, kernel: &'static str) -> Result<&CudaFunction> {
        self.functions.get(kernel).ok_or_else(|| GpuError::Driver {
            op: format!("launching {kernel}"),
            message: "no such kernel in the loaded PTX".into(),
        })
    }
}

static CUDA: OnceLock<std::result::Result<Arc<CudaRuntime>, String>> = OnceLock::new();

#[derive(Clone)]
pub enum Backend {
    Cuda(Arc<CudaRuntime>),
    Emulator,
}

/// A handle to a device plus a launch counter of its own (clones share the counter), so a test
/// can prove which path ran.
#[derive(Clone)]
pub struct Device {
    backend: Backend,
    launches: Arc<AtomicU64>,
}

impl Device {
    /// The first CUDA GPU. The context and module are created once per process.
    pub fn cuda() -> Result<Self> {
        let rt = CUDA.get_or_init(|| CudaRuntime::open().map(Arc::new).map_err(|e| e.to_string()));
        match rt {
            Ok(rt) => Ok(Device::with_backend(Backend::Cuda(rt.clone()))),
            Err(msg) => Err(GpuError::NoDevice(msg.clone())),
        }
    }

    /// The CPU emulator (`gpu_kernels::device::emu`): slow, but runs every kernel faithfully.
    pub fn emulator() -> Self {
        Device::with_backend(Backend::Emulator)
    }

    fn with_backend(backend: Backend) -> Self {
        Device {
            backend,
            launches: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A fresh handle to the same device with its own launch counter.
    pub fn fresh_counter(&self) -> Self {
        Device::with_backend(self.backend.clone())
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.backend, Backend::Cuda(_))
    }

    pub fn name(&self) -> String {
        match &self.backend {
            Backend::Cuda(rt) => rt.name.clone(),
            Backend::Emulator => "CPU emulator".into(),
        }
    }

    /// Blocks a persistent kernel launches (one per multiprocessor). The emulator reports a
    /// few, so its persistent launches walk several tiles per block, as on a GPU.
    pub fn multiprocessors(&self) -> u32 {
        match &self.backend {
            Backend::Cuda(rt) => rt.multiprocessors,
            Backend::Emulator => EMULATED_MULTIPROCESSORS,
        }
    }

    /// Clusters of `kernel` (declared for a cluster size) that run at once in blocks of `cfg`'s
    /// size and shared memory: the driver's `cuOccupancyMaxActiveClusters`, at least 1 (no
    /// cluster fitting is an error, naming the kernel); the emulator reports its
    /// multiprocessors over the cluster size.
    pub fn max_active_clusters(
        &self,
        kernel: &'static str,
        cfg: crate::gpu::LaunchConfig,
    ) -> Result<u32> {
        match &self.backend {
            Backend::Cuda(rt) => rt.max_active_clusters(kernel, cfg),
            Backend::Emulator => {
                let size = gpu_kernels::device::entry::cluster_size(kernel);
                Ok((EMULATED_MULTIPROCESSORS / size).max(1))
            }
        }
    }

    /// Kernel launches made through this handle so far.
    pub fn launch_count(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    pub(crate) fn count_launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        match &self.backend {
            Backend::Cuda(rt) => rt
                .stream
                .synchronize()
                .map_err(|e| GpuError::driver("synchronising the stream", e)),
            Backend::Emulator => Ok(()),
        }
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        match &self.backend {
            Backend::Cuda(rt) => rt
                .ctx
                .mem_get_info()
                .map_err(|e| GpuError::driver("querying memory", e)),
            Backend::Emulator => Ok((usize::MAX, usize::MAX)),
        }
    }
}
