//! GGUF reader, dequantisation and writer.
//!
//! Format: "GGUF" magic, u32 version (2 or 3: identical layouts, v1's u32 counts are not
//! supported), u64 tensor count, u64 metadata count, the metadata key/value pairs, the tensor
//! infos, padding to `general.alignment` (default 32), then the tensor data. All little-endian.

pub mod dequant;
mod keys;
pub mod reader;
pub mod types;
pub mod writer;

pub use reader::{GgufFile, Tensor, TensorInfo};
pub use types::{GgmlType, Value, ValueType};
pub use writer::{GgufWriter, TensorDesc};

use std::path::PathBuf;

/// Default tensor-data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest array-of-arrays nesting the reader accepts (guards the recursion).
pub const MAX_ARRAY_NESTING: usize = 8;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a GGUF file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0} (kiln reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("truncated file: {what} at offset {offset} needs {need} bytes, file has {len}")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        len: u64,
    },
    #[error("{what} at offset {offset}: count {count} cannot fit in the {remaining} bytes left")]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        remaining: u64,
    },
    #[error("{what} at offset {offset}: {reason}")]
    Malformed {
        what: String,
        offset: u64,
        reason: String,
    },
    #[error("metadata key {key:?}: the GGUF spec makes it {expected}, the file has {found}")]
    KeyType {
        key: String,
        expected: String,
        found: String,
    },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error(
        "tensor {tensor:?}: unknown ggml type {ty} (kiln reads {})",
        GgmlType::supported_list()
    )]
    UnknownDtype { tensor: String, ty: u32 },
    #[error(
        "tensor {tensor:?}: ggml type {} is not supported (kiln reads {})",
        dtype.describe(),
        GgmlType::supported_list()
    )]
    UnsupportedDtype { tensor: String, dtype: GgmlType },
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor { tensor: String, reason: String },
    #[error(
        "tensor {tensor:?}: data [{start}, {end}) lies outside the file's tensor data \
         (file length {file_len})"
    )]
    TensorOutOfRange {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensors {a:?} and {b:?} overlap in the file")]
    TensorOverlap { a: String, b: String },
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("metadata key {key:?}: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {tensor:?}: cannot dequantize {dtype} data: {reason}")]
    Dequant {
        tensor: String,
        dtype: GgmlType,
        reason: String,
    },
    #[error("writing GGUF")]
    Write(#[source] std::io::Error),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;
