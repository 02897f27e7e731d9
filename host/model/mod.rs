//! Model configuration and weights.

pub mod config;
pub mod weights;

pub use config::{ARCHS, Arch, ArchSpec, Bias, ModelConfig, RopeType};
pub use weights::{Ffn, HostTensor, LayerWeights, SharedExpert, Weights};

use crate::gguf::{GgmlType, GgufError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unknown architecture {0:?} (kiln supports {list})", list = Arch::supported_list())]
    UnknownArch(String),
    #[error("invalid model config: {0}")]
    BadConfig(String),
    #[error("tensor {tensor:?}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {tensor:?}: dtype {dtype} is not allowed here (expected one of {allowed})")]
    DtypeMismatch {
        tensor: String,
        dtype: GgmlType,
        allowed: String,
    },
}
