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
    #[error("{}", unsupported_types(.0))]
    UnsupportedTypes(Vec<(String, GgmlType)>),
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

/// "2 tensors have types kiln cannot run: a (Q4_1), b (Q5_0) (kiln runs F32, …)", naming at
/// most four.
fn unsupported_types(list: &[(String, GgmlType)]) -> String {
    let mut names: Vec<String> = list
        .iter()
        .take(4)
        .map(|(t, d)| format!("{t} ({d})"))
        .collect();
    if list.len() > 4 {
        names.push(format!("and {} more", list.len() - 4));
    }
    format!(
        "{} tensor{} of types kiln cannot run: {} (kiln runs {})",
        list.len(),
        if list.len() == 1 { "" } else { "s" },
        names.join(", "),
        GgmlType::supported_list()
    )
}
