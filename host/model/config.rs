//! Model hyper-parameters from GGUF metadata, with the per-architecture rules llama.cpp
//! hard-codes rather than stores.

use std::fmt;

use crate::gguf::{GgufError, GgufFile};

use super::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Qwen2Moe,
}

/// How RoPE pairs a head's dimensions (llama.cpp's `llama_rope_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeType {
    /// `LLAMA_ROPE_TYPE_NORM`: adjacent pairs (2i, 2i + 1). GGUF stores llama's Q/K rows in this
    /// order (llama.cpp's converter permutes the HF rows).
    Norm,
    /// `LLAMA_ROPE_TYPE_NEOX`: halves (i, i + head_dim / 2), as HF's `rotate_half`.
    Neox,
}

/// Whether an architecture's attention has Q/K/V biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bias {
    None,
    /// Loaded when the file has `blk.0.attn_q.bias` (llama.cpp's `TENSOR_NOT_REQUIRED`).
    Optional,
    Required,
}

/// What kiln needs to know about an architecture beyond its metadata: the rules llama.cpp
/// hard-codes per arch. A new arch of the same family is a row of [`ARCHS`].
#[derive(Clone, Copy, Debug)]
pub struct ArchSpec {
    pub arch: Arch,
    /// The `general.architecture` string, also the prefix of the arch's metadata keys.
    pub name: &'static str,
    /// As llama.cpp's `llama_model_rope_type`.
    pub rope: RopeType,
    pub moe: bool,
    /// Renormalise the top-k router weights (llama.cpp: qwen3moe yes, qwen2moe no).
    pub norm_topk: bool,
    /// RMS-normalise each query/key head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub qkv_bias: Bias,
    /// A sigmoid-gated shared expert beside the routed ones (qwen2moe).
    pub shared_expert: bool,
}

/// The architectures kiln runs.
pub const ARCHS: [ArchSpec; 5] = [
    ArchSpec {
        arch: Arch::Llama,
        name: "llama",
        rope: RopeType::Norm,
        moe: false,
        norm_topk: false,
        qk_norm: false,
        qkv_bias: Bias::Optional,
        shared_expert: false,
    },
    ArchSpec {
        arch: Arch::Qwen2,
        name: "qwen2",
        rope: RopeType::Neox,
        moe: false,
        norm_topk: false,
        qk_norm: false,
        qkv_bias: Bias::Required,
        shared_expert: false,
    },
    ArchSpec {
        arch: Arch::Qwen3,
        name: "qwen3",
        rope: RopeType::Neox,
        moe: false,
        norm_topk: false,
        qk_norm: true,
        qkv_bias: Bias::None,
        shared_expert: false,
    },
    ArchSpec {
        arch: Arch::Qwen3Moe,
        name: "qwen3moe",
        rope: RopeType::Neox,
        moe: true,
        norm_topk: true,
        qk_norm: true,
        qkv_bias: Bias::None,
        shared_expert: false,
    },
    ArchSpec {
        arch: Arch::Qwen2Moe,
        name: "qwen2moe",
        rope: RopeType::Neox,
        moe: true,
        norm_topk: false,
        qk_norm: false,
        qkv_bias: Bias::Required,
        shared_expert: true,
    },
];

impl Arch {
    pub fn parse(s: &str) -> Option<Self> {
        ARCHS.iter().find(|a| a.name == s).map(|a| a.arch)
    }

    /// This arch's row of [`ARCHS`].
    pub fn spec(self) -> &'static ArchSpec {
        // Every variant has a row (tests/gguf_reader.rs checks); the fallback is unreachable.
        ARCHS.iter().find(|a| a.arch == self).unwrap_or(&ARCHS[0])
    }

    /// The names of the architectures kiln runs, comma-separated.
    pub fn supported_list() -> String {
        let names: Vec<&str> = ARCHS.iter().map(|a| a.name).collect();
        names.join(", ")
    }

    /// The `general.architecture` string, also the prefix of the arch's metadata keys.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn is_moe(self) -> bool {
        self.spec().moe
    }

    pub fn norm_topk(self) -> bool {
        self.spec().norm_topk
    }

    pub fn qk_norm(self) -> bool {
        self.spec().qk_norm
    }

    /// Whether Q/K/V biases are required (see [`Bias`] for the optional case).
    pub fn qkv_bias(self) -> bool {
        self.spec().qkv_bias == Bias::Required
    }

    pub fn shared_expert(self) -> bool {
        self.spec().shared_expert
    }

    pub fn rope(self) -> RopeType {
        self.spec().rope
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub hidden: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Dense FFN width (qwen3; 0 when the file has none).
    pub ff: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub ff_exp: usize,
    /// Shared-expert FFN width (qwen2moe), else 0.
    pub ff_shexp: usize,
    pub rope_base: f32,
    /// RoPE pairing (from the arch).
    pub rope: RopeType,
    /// Linear RoPE scaling: angles are multiplied by this (`1 / rope.scaling.factor`; 1 when
    /// unscaled). Llama 3.x's per-frequency factors are the `rope_freqs.weight` tensor.
    pub rope_freq_scale: f32,
    pub eps: f32,
    pub ctx: usize,
    pub vocab: usize,
    pub norm_topk: bool,
    pub qk_norm: bool,
    pub qkv_bias: bool,
}

/// Sizes above this are rejected as absurd (guards `usize` arithmetic on shapes).
const MAX_DIM: u64 = 1 << 24;

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ModelError> {
        let arch_name = f.architecture()?;
        let arch =
            Arch::parse(arch_name).ok_or_else(|| ModelError::UnknownArch(arch_name.to_string()))?;
        let key = |k: &str| format!("{}.{k}", arch.name());
        let dim = |k: &str| -> Result<usize, ModelError> {
            let name = key(k);
            let v = f.get_u64(&name)?;
            if v == 0 || v > MAX_DIM {
                return Err(ModelError::BadConfig(format!(
                    "{name} = {v} is out of range"
                )));
            }
            Ok(v as usize)
        };
        let optional_dim = |k: &str| -> Result<usize, ModelError> {
            if f.get(&key(k)).is_some() {
                dim(k)
            } else {
                Ok(0)
            }
        };

        let n_layer = dim("block_count")?;
        let hidden = dim("embedding_length")?;
        let n_head = dim("attention.head_count")?;
        // As in llama.cpp: head_count_kv defaults to head_count, key_length to hidden/n_head.
        let n_head_kv = if f.get(&key("attention.head_count_kv")).is_some() {
            dim("attention.head_count_kv")?
        } else {
            n_head
        };
        let head_dim = if f.get(&key("attention.key_length")).is_some() {
            dim("attention.key_length")?
        } else {
            hidden / n_head
        };
        if f.get(&key("attention.value_length")).is_some() {
            let v = dim("attention.value_length")?;
            if v != head_dim {
                return Err(ModelError::BadConfig(format!(
                    "value_length {v} != key_length {head_dim} is not supported"
                )));
            }
        }
        let ff = optional_dim("feed_forward_length")?;
        let (n_expert, n_expert_used, ff_exp) = if arch.is_moe() {
            (
                dim("expert_count")?,
                dim("expert_used_count")?,
                dim("expert_feed_forward_length")?,
            )
        } else {
            (0, 0, 0)
        };
        let ff_shexp = if arch.shared_expert() {
            dim("expert_shared_feed_forward_length")?
        } else {
            0
        };
        // As llama.cpp: freq_base defaults to 10000.
        let rope_base = match f.get(&key("rope.freq_base")) {
            Some(_) => f.get_f32(&key("rope.freq_base"))?,
            None => 10000.0,
        };
        let rope_freq_scale = rope_scaling(f, arch)?;
        if f.get(&key("rope.dimension_count")).is_some() {
            let n = dim("rope.dimension_count")?;
            if n != head_dim {
                return Err(ModelError::BadConfig(format!(
                    "rope.dimension_count {n} != head_dim {head_dim}: partial RoPE is not supported"
                )));
            }
        }
        let eps = f.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let ctx = dim("context_length")?;
        let embd = f.tensor("token_embd.weight")?;
        let vocab = match embd.shape() {
            [h, v] if *h as usize == hidden && *v <= MAX_DIM => *v as usize,
            s => {
                return Err(GgufError::BadTensor {
                    tensor: "token_embd.weight".into(),
                    reason: format!("expected shape [{hidden}, vocab], found {s:?}"),
                }
                .into());
            }
        };

        let cfg = ModelConfig {
            arch,
            n_layer,
            hidden,
            n_head,
            n_head_kv,
            head_dim,
            ff,
            n_expert,
            n_expert_used,
            ff_exp,
            ff_shexp,
            rope_base,
            rope: arch.rope(),
            rope_freq_scale,
            eps,
            ctx,
            vocab,
            norm_topk: arch.norm_topk(),
            qk_norm: arch.qk_norm(),
            qkv_bias: match arch.spec().qkv_bias {
                Bias::None => false,
                Bias::Required => true,
                Bias::Optional => f.has_tensor("blk.0.attn_q.bias"),
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::BadConfig(m));
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_head, self.n_head_kv
            ));
        }
        if self.head_dim == 0 {
            return bad(format!(
                "head_dim is 0 (embedding_length {} / head_count {})",
                self.hidden, self.n_head
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !self.arch.is_moe() && self.ff == 0 {
            return bad(format!("{} needs feed_forward_length", self.arch));
        }
        if self.arch.is_moe() && self.n_expert_used > self.n_expert {
            return bad(format!(
                "expert_used_count {} > expert_count {}",
                self.n_expert_used, self.n_expert
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!(
                "rope.freq_base {} must be positive",
                self.rope_base
            ));
        }
        if !(self.rope_freq_scale.is_finite() && self.rope_freq_scale > 0.0) {
            return bad(format!(
                "RoPE frequency scale {} must be positive",
                self.rope_freq_scale
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!(
                "attention.layer_norm_rms_epsilon {} must be positive",
                self.eps
            ));
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// llama.cpp's RoPE scaling: `rope.scaling.factor` (or the older `rope.scale_linear`) gives
/// the angle multiplier `1 / factor` (a factor of 0 or none: 1) for `rope.scaling.type` none,
/// linear or absent; YaRN and LongRoPE are errors naming the type.
fn rope_scaling(f: &GgufFile, arch: Arch) -> Result<f32, ModelError> {
    let key = |k: &str| format!("{}.{k}", arch.name());
    if f.get(&key("rope.scaling.type")).is_some() {
        let ty = f.get_str(&key("rope.scaling.type"))?;
        if !matches!(ty, "none" | "linear") {
            return Err(ModelError::BadConfig(format!(
                "RoPE scaling type {ty:?} is not supported (kiln supports none and linear)"
            )));
        }
    }
    let factor = if f.get(&key("rope.scaling.factor")).is_some() {
        f.get_f32(&key("rope.scaling.factor"))?
    } else if f.get(&key("rope.scale_linear")).is_some() {
        f.get_f32(&key("rope.scale_linear"))?
    } else {
        0.0
    };
    Ok(if factor == 0.0 { 1.0 } else { 1.0 / factor })
}
