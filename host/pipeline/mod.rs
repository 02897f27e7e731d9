//! The GPU prefill pipeline, in the order data flows: weights are uploaded once
//! (`weights.rs`), then each chunk of tokens runs embedding → layers → final norm → LM head
//! (`forward.rs`) over buffers sized once per prompt (`scratch.rs`).
//!
//! Precision policy (see NOTES.md): 2-D/3-D weights are bf16 on the GPU (any GGUF dtype is
//! dequantised on the host and rounded to nearest even once); norms, biases, the router and the
//! shared-expert gate stay f32; activations and the residual stream are f32; K and V are rounded
//! to bf16 when appended to the cache; every reduction accumulates in f32 in a fixed order.

mod forward;
mod scratch;
mod synthetic;
mod weights;

pub use forward::{PrefillOptions, PrefillOutput, Session, prefill};
pub use weights::{DECODE_BYTES, DecodeBytes, GpuModel};
