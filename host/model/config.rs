//! Model hyper-parameters from GGUF metadata, with the per-architecture rules llama.cpp
//! hard-codes rather than stores.

use std::fmt;

use crate::gguf::{GgufError, GgufFile};

use super::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Qwen3,
    Qwen3Moe,
    Qwen2Moe,
}

impl Arch {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qwen3" => Some(Arch::Qwen3),
            "qwen3moe" => Some(Arch::Qwen3Moe),
            "qwen2moe" => Some(Arch::Qwen2Moe),
            _ => None,
        }
    }

    /// The `general.architecture` string, also the prefix of the arch's metadata keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Qwen2Moe => "qwen2moe",
        }
    }

    pub fn is_moe(self) -> bool {
        matches!(self, Arch::Qwen3Moe | Arch::Qwen2Moe)
    }

    /// llama.cpp renormalises the top-k router weights for qwen3moe (norm_topk_prob = true in
    /// the HF config) and not for qwen2moe.
    pub fn norm_topk(self) -> bool {
        self == Arch::Qwen3Moe
    }

    /// Qwen3 models RMS-normalise each query/key head before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Qwen3Moe)
    }

    /// Qwen2-family attention has Q/K/V biases.
    pub fn qkv_bias(self) -> bool {
        self == Arch::Qwen2Moe
    }

    /// qwen2moe adds a sigmoid-gated shared expert to the routed experts.
    pub fn shared_expert(self) -> bool {
        self == Arch::Qwen2Moe
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
        let rope_base = f.get_f32(&key("rope.freq_base"))?;
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
            eps,
            ctx,
            vocab,
            norm_topk: arch.norm_topk(),
            qk_norm: arch.qk_norm(),
            qkv_bias: arch.qkv_bias(),
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
        if self.arch == Arch::Qwen3 && self.ff == 0 {
            return bad("qwen3 needs feed_forward_length".into());
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
