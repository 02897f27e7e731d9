//! Errors of the GPU layer: each says what failed and where, in one line.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("no CUDA driver found (libcuda.so could not be loaded)")]
    NoDriver,
    #[error("no usable CUDA GPU: {0}")]
    NoDevice(String),
    #[error("this binary was built with KILN_SKIP_PTX set: it has no GPU kernels")]
    NoKernels,
    #[error("out of GPU memory allocating {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: usize },
    #[error("CUDA error in {op}: {message}")]
    Driver { op: String, message: String },
    #[error("kernel {kernel}: {message}")]
    Shape {
        kernel: &'static str,
        message: String,
    },
    #[error("emulated kernel {kernel} failed: {message}")]
    Emulator {
        kernel: &'static str,
        message: String,
    },
    #[error("{0}")]
    Input(String),
    #[error("a buffer of the {buffer} backend was passed to a {device} device")]
    WrongBackend {
        buffer: &'static str,
        device: &'static str,
    },
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

impl GpuError {
    pub(crate) fn driver(op: impl Into<String>, e: cudarc::driver::DriverError) -> Self {
        GpuError::Driver {
            op: op.into(),
            message: e.to_string(),
        }
    }
}

/// Fails a launch wrapper's precondition with a message naming the kernel.
macro_rules! ensure_shape {
    ($cond:expr, $kernel:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::gpu::GpuError::Shape {
                kernel: $kernel,
                message: format!($($fmt)+),
            });
        }
    };
}
pub(crate) use ensure_shape;
