//! kiln: batch-invariant prompt prefill of GGUF Qwen-family models on NVIDIA GPUs, with every
//! device kernel written in Rust (`gpu-kernels/`) and compiled to PTX at build time.
//!
//! The host reads top-down in the order data flows: GGUF file → model config and weights →
//! tokens → (CPU reference forward | GPU prefill pipeline) → logits.

pub mod bench;
pub mod cli;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod model;
pub mod npy;
pub mod pipeline;
pub mod reference;
pub mod rng;
pub mod sample;
pub mod synth;
pub mod tokenizer;
