//! What one prefill costs, counted from the model config (see docs/bench.md): GEMMs at 2 FLOPs
//! per weight touched per token (routed experts only), causal attention at
//! 4·N²/2·n_head·head_dim per layer, the LM head for the last position only; bytes are the
//! weights one prefill reads.

use serde::Serialize;

use crate::model::ModelConfig;

/// The formulas above in words, for the JSON report.
pub const GEMM_FLOPS: &str =
    "2 * N * n_layer * (weights touched per token: q,k,v,o + router + top-k experts' gate,up,down)";
pub const ATTENTION_FLOPS: &str = "n_layer * 4 * N^2/2 * n_head * head_dim";
pub const LM_HEAD_FLOPS: &str = "2 * hidden * vocab (last position only)";
pub const WEIGHT_BYTES: &str = "bf16 matrices + f32 vectors + router as 3 bf16 parts read once: all layers, expected experts hit E*(1-(1-k/E)^N), LM head, N embedding rows";

/// FLOPs of one prefill of `n` tokens, by part.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Flops {
    /// Q, K, V and output projections.
    pub attn_proj: f64,
    /// QKᵀ and PV over the causal triangle.
    pub attention: f64,
    /// Router (and shared-expert gate) logits.
    pub router: f64,
    /// Routed (top-k) experts, dense FFN, shared expert.
    pub ffn: f64,
    /// LM head for the last position.
    pub lm_head: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.attn_proj + self.attention + self.router + self.ffn + self.lm_head
    }
}

/// 2 FLOPs per weight touched per token for the GEMMs (only the `n_expert_used` routed
/// experts), 4·n²/2·n_head·head_dim per layer for causal attention, and the LM head once.
pub fn prefill_flops(cfg: &ModelConfig, n: usize) -> Flops {
    let (n, l) = (n as f64, cfg.n_layer as f64);
    let (h, qd, kvd) = (cfg.hidden as f64, cfg.q_dim() as f64, cfg.kv_dim() as f64);
    let mut router = 0.0;
    let mut ffn = 0.0;
    if cfg.arch.is_moe() {
        router += h * cfg.n_expert as f64;
        ffn += cfg.n_expert_used as f64 * 3.0 * h * cfg.ff_exp as f64;
    } else {
        ffn += 3.0 * h * cfg.ff as f64;
    }
    if cfg.ff_shexp > 0 {
        router += h;
        ffn += 3.0 * h * cfg.ff_shexp as f64;
    }
    Flops {
        attn_proj: 2.0 * n * l * (h * qd + 2.0 * h * kvd + qd * h),
        attention: l * 4.0 * n * n / 2.0 * (cfg.n_head * cfg.head_dim) as f64,
        router: 2.0 * n * l * router,
        ffn: 2.0 * n * l * ffn,
        lm_head: 2.0 * h * cfg.vocab as f64,
    }
}

/// Experts a prompt of `n` tokens is expected to reach with uniform top-k routing:
/// E·(1 − (1 − k/E)ⁿ).
pub fn expected_experts_hit(cfg: &ModelConfig, n: usize) -> f64 {
    let e = cfg.n_expert as f64;
    if e == 0.0 {
        return 0.0;
    }
    let k = cfg.n_expert_used as f64;
    e * (1.0 - (1.0 - k / e).powf(n as f64))
}

/// Bytes of weights one prefill of `n` tokens reads, as stored on the GPU (matrices bf16,
/// vectors f32, the router as three bf16 parts): every layer's attention and norm weights, the experts it is
/// expected to reach, the final norm, the whole LM head, and n rows of the embedding table.
pub fn weight_bytes_read(cfg: &ModelConfig, n: usize) -> f64 {
    weight_bytes_reaching(cfg, n, expected_experts_hit(cfg, n))
}

/// [`weight_bytes_read`] with each MoE layer reaching `experts` experts (a measured mean, where
/// the routing is not uniform).
pub fn weight_bytes_reaching(cfg: &ModelConfig, n: usize, experts: f64) -> f64 {
    let (h, qd, kvd, hd) = (
        cfg.hidden as f64,
        cfg.q_dim() as f64,
        cfg.kv_dim() as f64,
        cfg.head_dim as f64,
    );
    let mut layer = 2.0 * (h * qd + 2.0 * h * kvd + qd * h) + 4.0 * 2.0 * h;
    if cfg.qk_norm {
        layer += 4.0 * 2.0 * hd;
    }
    if cfg.qkv_bias {
        layer += 4.0 * (qd + 2.0 * kvd);
    }
    if cfg.arch.is_moe() {
        layer += 3.0 * 2.0 * h * cfg.n_expert as f64;
        layer += experts * 2.0 * 3.0 * h * cfg.ff_exp as f64;
    } else {
        layer += 2.0 * 3.0 * h * cfg.ff as f64;
    }
    if cfg.ff_shexp > 0 {
        layer += 2.0 * 3.0 * h * cfg.ff_shexp as f64 + 4.0 * h;
    }
    cfg.n_layer as f64 * layer + 4.0 * h + 2.0 * h * cfg.vocab as f64 + 2.0 * n as f64 * h
}

/// The experts each MoE layer's routing reached in a profiled prefill
/// (`PrefillOptions::expert_census`), with what they imply: the mean per layer, and the weight
/// bytes of [`weight_bytes_read`] with that mean in place of uniform routing's expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertCensus {
    pub per_layer: Vec<usize>,
    pub mean: f64,
    pub weight_bytes: f64,
}

impl ExpertCensus {
    /// `None` when no MoE layer ran (a dense model, or no census taken).
    pub fn new(cfg: &ModelConfig, n: usize, per_layer: Vec<usize>) -> Option<Self> {
        if per_layer.is_empty() {
            return None;
        }
        let mean = per_layer.iter().sum::<usize>() as f64 / per_layer.len() as f64;
        Some(ExpertCensus {
            weight_bytes: weight_bytes_reaching(cfg, n, mean),
            mean,
            per_layer,
        })
    }

    pub fn min(&self) -> usize {
        self.per_layer.iter().copied().min().unwrap_or(0)
    }

    pub fn max(&self) -> usize {
        self.per_layer.iter().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::model::Arch;
    use crate::synth::{self, Preset, SynthSpec};

    #[test]
    fn flops_of_the_30b_model_at_one_token() {
        let mut cfg = synth::config(&SynthSpec {
            arch: Arch::Qwen3Moe,
            preset: Preset::Qwen3_30bA3b,
            n_layer: 1,
            dtype: GgmlType::BF16,
            seed: 0,
        });
        cfg.n_layer = 48;
        // Qwen3-30B-A3B activates about 3.3B parameters per token (attention 48·18.9M,
        // experts 48·8·4.7M, LM head 311M): 2 FLOPs each, attention scores aside.
        let f = prefill_flops(&cfg, 1);
        let active = (f.total() - f.attention) / 2.0;
        assert!((2.9e9..3.4e9).contains(&active), "{active:e}");
        let f2 = prefill_flops(&cfg, 2);
        assert_eq!(f2.attention, 4.0 * f.attention);
    }
}
