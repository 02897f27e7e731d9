//! The GPU side of kiln: device and buffers, the single launch point, and one safe launch
//! wrapper per kernel (`ops/`), each checking shapes and lengths before it launches.

mod buffer;
mod device;
mod error;
pub(crate) mod launch;
pub mod ops;
mod tensor_map;

pub use buffer::{Buffer, Element, Input, MaybeInput, Output};
pub use device::{Backend, CudaRuntime, Device, KERNELS_PTX};
pub(crate) use error::ensure_shape;
pub use error::{GpuError, Result};
pub use launch::LaunchConfig;
pub use tensor_map::{BOX as TMA_BOX, TmaMatrix};
