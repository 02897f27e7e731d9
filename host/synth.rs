//! Synthetic GGUF models with seeded random weights, laid out like the fixtures (same tensor
//! names, metadata keys, type policy and tokenizer style), at the fixture dims (`tiny`) or at
//! Qwen3-30B-A3B's dims with any layer count.
//!
//! Weights (so activations stay O(1) without training): token_embd ~ N(0, 1); matrices
//! ~ N(0, 1/fan_in) with fan_in = ne0; norm weights 1 + N(0, 0.1); biases N(0, 0.1); llama's
//! `rope_freqs` 1 + 7 (i / (n - 1))². qwen2's LM head is tied to token_embd.
//! Each tensor has its own PRNG stream (seed, tensor index), so a tensor's values do not
//! depend on the dtype or on how many tensors came before it.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::gguf::{
    GgmlType, GgufError, GgufFile, GgufWriter, TensorDesc, Value, ValueType, dequant,
};
use crate::model::{Arch, ModelConfig};
use crate::rng::Rng;
use crate::tokenizer::byte_alphabet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The fixtures' dims (vocab 512, hidden 256, head_dim 128, ...; per arch as MANIFEST.md).
    Tiny,
    /// `Tiny` with head_dim 64 and 4 query heads (4 × 64 = hidden for every arch): the head
    /// dim of Llama 3.2 1B, Qwen2.5 0.5B, SmolLM, TinyLlama.
    TinyHd64,
    /// Qwen3-30B-A3B: hidden 2048, 32 q / 4 kv heads x 128, 128 experts top-8 x 768, vocab
    /// 151936 (dense ff 6144 for qwen3; qwen2moe adds a 3072-wide shared expert).
    Qwen3_30bA3b,
}

impl Preset {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tiny" => Some(Preset::Tiny),
            "tiny-hd64" => Some(Preset::TinyHd64),
            "qwen3-30b-a3b" => Some(Preset::Qwen3_30bA3b),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::TinyHd64 => "tiny-hd64",
            Preset::Qwen3_30bA3b => "qwen3-30b-a3b",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthSpec {
    pub arch: Arch,
    pub preset: Preset,
    pub n_layer: usize,
    pub dtype: GgmlType,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("synthetic models can be written as F32, F16, BF16 or Q8_0, not {0}")]
    UnsupportedDtype(GgmlType),
    #[error("a model needs at least one layer")]
    NoLayers,
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot create {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The hyper-parameters a spec describes.
pub fn config(spec: &SynthSpec) -> ModelConfig {
    let arch = spec.arch;
    let moe = arch.is_moe();
    let mut c = match spec.preset {
        Preset::Tiny | Preset::TinyHd64 => ModelConfig {
            arch,
            n_layer: spec.n_layer,
            hidden: 256,
            n_head: 4,
            n_head_kv: if arch == Arch::Qwen3 { 1 } else { 2 },
            head_dim: if spec.preset == Preset::TinyHd64 {
                64
            } else {
                128
            },
            ff: 512,
            n_expert: 4,
            n_expert_used: 2,
            ff_exp: 256,
            ff_shexp: 256,
            rope_base: 1e6,
            rope: arch.rope(),
            rope_freq_scale: 1.0,
            eps: 1e-6,
            ctx: 4096,
            vocab: 512,
            norm_topk: false,
            qk_norm: false,
            qkv_bias: false,
        },
        Preset::Qwen3_30bA3b => ModelConfig {
            arch,
            n_layer: spec.n_layer,
            hidden: 2048,
            n_head: 32,
            n_head_kv: 4,
            head_dim: 128,
            ff: 6144,
            n_expert: 128,
            n_expert_used: 8,
            ff_exp: 768,
            ff_shexp: 3072,
            rope_base: 1e6,
            rope: arch.rope(),
            rope_freq_scale: 1.0,
            eps: 1e-6,
            ctx: 40960,
            vocab: 151936,
            norm_topk: false,
            qk_norm: false,
            qkv_bias: false,
        },
    };
    if spec.preset == Preset::Tiny && matches!(arch, Arch::Qwen2Moe | Arch::Qwen2) {
        // As the fixture: llama.cpp's qwen2 loaders need n_head * head_dim == hidden.
        c.n_head = 2;
        c.n_head_kv = 1;
    }
    if !moe {
        (c.n_expert, c.n_expert_used, c.ff_exp) = (0, 0, 0);
    }
    if !arch.shared_expert() {
        c.ff_shexp = 0;
    }
    c.norm_topk = arch.norm_topk();
    c.qk_norm = arch.qk_norm();
    c.qkv_bias = arch.qkv_bias();
    c
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for an all-`dtype` file (synthetic models
/// are F32, F16, BF16 or Q8_0).
fn file_type(dtype: GgmlType) -> u32 {
    match dtype {
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// A valid GPT-2 byte-level BPE vocabulary of exactly `vocab` tokens, in the fixtures' style:
/// the 256 byte symbols, then merges ("a a", "a b", ... then pairs of those pairs), then the
/// control tokens <|endoftext|> (bos = eos = pad), <|im_start|>, <|im_end|>.
fn tokenizer_vocab(vocab: usize) -> (Vec<String>, Vec<String>, Vec<i32>) {
    const CONTROLS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut tokens: Vec<String> = byte_alphabet().iter().map(|c| c.to_string()).collect();
    let n_merges = vocab.saturating_sub(256 + CONTROLS.len());
    let letters: Vec<String> = ('a'..='z').map(|c| c.to_string()).collect();
    let pairs: Vec<(String, String)> = letters
        .iter()
        .flat_map(|a| letters.iter().map(move |b| (a.clone(), b.clone())))
        .collect();
    let pair_tokens: Vec<String> = pairs.iter().map(|(a, b)| format!("{a}{b}")).collect();
    let quads = pair_tokens
        .iter()
        .flat_map(|a| pair_tokens.iter().map(move |b| (a.clone(), b.clone())));
    let merges: Vec<(String, String)> = pairs.iter().cloned().chain(quads).take(n_merges).collect();
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.extend(CONTROLS.iter().map(|s| s.to_string()));
    let mut types = vec![1; tokens.len()];
    types[tokens.len() - CONTROLS.len()..].fill(3);
    let merges = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    (tokens, merges, types)
}

/// The writer (metadata and tensor table) for a spec; the data comes from `tensor_bytes`.
pub fn build_writer(spec: &SynthSpec) -> Result<GgufWriter, SynthError> {
    if !matches!(
        spec.dtype,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    ) {
        return Err(SynthError::UnsupportedDtype(spec.dtype));
    }
    if spec.n_layer == 0 {
        return Err(SynthError::NoLayers);
    }
    let c = config(spec);
    let a = c.arch.name();
    let mut w = GgufWriter::new();
    let u32v = |v: usize| Value::U32(v as u32);
    w.add_kv("general.architecture", Value::String(a.into()));
    w.add_kv(
        "general.name",
        Value::String(format!("synthetic-{}-{a}", spec.preset.name())),
    );
    w.add_kv("general.file_type", Value::U32(file_type(spec.dtype)));
    if spec.dtype == GgmlType::Q8_0 {
        w.add_kv("general.quantization_version", Value::U32(2));
    }
    w.add_kv(format!("{a}.context_length"), u32v(c.ctx));
    w.add_kv(format!("{a}.embedding_length"), u32v(c.hidden));
    w.add_kv(format!("{a}.feed_forward_length"), u32v(c.ff));
    w.add_kv(format!("{a}.block_count"), u32v(c.n_layer));
    w.add_kv(format!("{a}.attention.head_count"), u32v(c.n_head));
    w.add_kv(format!("{a}.attention.head_count_kv"), u32v(c.n_head_kv));
    w.add_kv(format!("{a}.attention.key_length"), u32v(c.head_dim));
    w.add_kv(format!("{a}.attention.value_length"), u32v(c.head_dim));
    w.add_kv(format!("{a}.rope.freq_base"), Value::F32(c.rope_base));
    w.add_kv(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(c.eps),
    );
    if c.arch.is_moe() {
        w.add_kv(format!("{a}.expert_count"), u32v(c.n_expert));
        w.add_kv(format!("{a}.expert_used_count"), u32v(c.n_expert_used));
        w.add_kv(format!("{a}.expert_feed_forward_length"), u32v(c.ff_exp));
    }
    if c.arch.shared_expert() {
        w.add_kv(
            format!("{a}.expert_shared_feed_forward_length"),
            u32v(c.ff_shexp),
        );
    }
    let (tokens, merges, types) = tokenizer_vocab(c.vocab);
    let strings = |v: Vec<String>| {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    };
    let eot = Value::U32((c.vocab - 3) as u32);
    w.add_kv("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add_kv("tokenizer.ggml.pre", Value::String("qwen2".into()));
    w.add_kv("tokenizer.ggml.tokens", strings(tokens));
    w.add_kv(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
    );
    w.add_kv("tokenizer.ggml.merges", strings(merges));
    w.add_kv("tokenizer.ggml.bos_token_id", eot.clone());
    w.add_kv("tokenizer.ggml.eos_token_id", eot.clone());
    w.add_kv("tokenizer.ggml.padding_token_id", eot);
    w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(false));

    // Type policy of llama.cpp's converter: 2-D/3-D weights in the file type, vectors and the
    // router in F32.
    let dt = spec.dtype;
    let f32t = GgmlType::F32;
    let sh = |d: &[usize]| d.iter().map(|&x| x as u64).collect::<Vec<u64>>();
    let (h, q, kv, hd) = (c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
    w.add_tensor("token_embd.weight", dt, sh(&[h, c.vocab]));
    for i in 0..c.n_layer {
        let mut t = |name: &str, dtype, shape: &[usize]| {
            w.add_tensor(format!("blk.{i}.{name}"), dtype, sh(shape))
        };
        t("attn_norm.weight", f32t, &[h]);
        t("attn_q.weight", dt, &[h, q]);
        if c.qkv_bias {
            t("attn_q.bias", f32t, &[q]);
        }
        t("attn_k.weight", dt, &[h, kv]);
        if c.qkv_bias {
            t("attn_k.bias", f32t, &[kv]);
        }
        t("attn_v.weight", dt, &[h, kv]);
        if c.qkv_bias {
            t("attn_v.bias", f32t, &[kv]);
        }
        if c.qk_norm {
            t("attn_q_norm.weight", f32t, &[hd]);
            t("attn_k_norm.weight", f32t, &[hd]);
        }
        t("attn_output.weight", dt, &[q, h]);
        t("ffn_norm.weight", f32t, &[h]);
        if c.arch.is_moe() {
            let (e, fe) = (c.n_expert, c.ff_exp);
            t("ffn_gate_inp.weight", f32t, &[h, e]);
            t("ffn_gate_exps.weight", dt, &[h, fe, e]);
            t("ffn_up_exps.weight", dt, &[h, fe, e]);
            t("ffn_down_exps.weight", dt, &[fe, h, e]);
            if c.arch.shared_expert() {
                let fs = c.ff_shexp;
                t("ffn_gate_inp_shexp.weight", f32t, &[h]);
                t("ffn_gate_shexp.weight", dt, &[h, fs]);
                t("ffn_up_shexp.weight", dt, &[h, fs]);
                t("ffn_down_shexp.weight", dt, &[fs, h]);
            }
        } else {
            t("ffn_gate.weight", dt, &[h, c.ff]);
            t("ffn_up.weight", dt, &[h, c.ff]);
            t("ffn_down.weight", dt, &[c.ff, h]);
        }
    }
    w.add_tensor("output_norm.weight", f32t, sh(&[h]));
    if tied_embeddings(c.arch) {
        // No output.weight: the LM head is token_embd (as small Qwen2 models).
    } else {
        w.add_tensor("output.weight", dt, sh(&[h, c.vocab]));
    }
    if c.arch == Arch::Llama {
        // Llama 3.x's RoPE frequency factors.
        w.add_tensor("rope_freqs.weight", f32t, sh(&[hd / 2]));
    }
    Ok(w)
}

/// Synthetic qwen2 models tie the LM head to the embeddings (as the small Qwen2 models do);
/// the others have `output.weight`.
pub fn tied_embeddings(arch: Arch) -> bool {
    arch == Arch::Qwen2
}

/// Gain of the synthetic attention output projection (`attn_output.weight`) over the other
/// matrices' standard deviation 1/√(input width). Random Q/K make attention nearly uniform, so
/// each token's attention output is close to the mean of the values before it: a component
/// common to all tokens, added by every layer. At gain 1 it takes over the residual stream
/// with depth (87% of the normed hidden state's energy by the middle of 48 layers), all tokens
/// route to the same few experts (the full-depth 30b model reached 38 of 128 experts per layer
/// at N = 512 where a trained model reaches all), and the benchmark reads a third of the expert
/// weights a real checkpoint would. At 0.1 (≈ 1/√(2 · 48)) every layer reaches all 128 experts
/// from N = 128 on, with the most popular expert's share near that of random choice
/// (simulation: NOTES, session 9). A weight value only: the kernels run the same work.
pub const ATTN_OUTPUT_GAIN: f64 = 0.1;

/// The f32 values of tensor `index` (before conversion to its stored type).
pub fn tensor_values(seed: u64, index: usize, desc: &TensorDesc) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let n = desc.n_elements() as usize;
    let name = desc.name.as_str();
    if name == "token_embd.weight" {
        rng.normal_vec(n, 1.0)
    } else if name == "rope_freqs.weight" {
        // Llama 3's shape: 1 for the high frequencies, rising to 8 for the low ones.
        (0..n)
            .map(|i| 1.0 + 7.0 * (i as f32 / (n - 1).max(1) as f32).powi(2))
            .collect()
    } else if name.ends_with("norm.weight") {
        rng.normal_vec(n, 0.1)
            .into_iter()
            .map(|v| 1.0 + v)
            .collect()
    } else if name.ends_with(".bias") {
        rng.normal_vec(n, 0.1)
    } else if name.ends_with("attn_output.weight") {
        rng.normal_vec(n, ATTN_OUTPUT_GAIN / (desc.shape[0] as f64).sqrt())
    } else {
        // fan_in is ne0 (for ffn_gate_inp_shexp, a vector of length hidden, that is hidden).
        rng.normal_vec(n, (1.0 / desc.shape[0] as f64).sqrt())
    }
}

/// Tensor `index`'s bytes in its stored type.
pub fn tensor_bytes(seed: u64, index: usize, desc: &TensorDesc) -> Result<Vec<u8>, GgufError> {
    dequant::quantize(desc.dtype, &tensor_values(seed, index, desc)).map_err(|reason| {
        GgufError::BadTensor {
            tensor: desc.name.clone(),
            reason,
        }
    })
}

/// The whole file in memory.
pub fn to_bytes(spec: &SynthSpec) -> Result<Vec<u8>, SynthError> {
    let w = build_writer(spec)?;
    Ok(w.to_bytes(|i, d| tensor_bytes(spec.seed, i, d))?)
}

/// Streams the file to `path`, calling `on_tensor(index, count, name)` before each tensor.
pub fn write_file(
    spec: &SynthSpec,
    path: &Path,
    on_tensor: &mut dyn FnMut(usize, usize, &str),
) -> Result<(), SynthError> {
    let file = File::create(path).map_err(|source| SynthError::Create {
        path: path.display().to_string(),
        source,
    })?;
    write(spec, file, on_tensor)
}

/// Streams the file into `out`, calling `on_tensor(index, count, name)` before each tensor.
pub fn write(
    spec: &SynthSpec,
    out: impl std::io::Write,
    on_tensor: &mut dyn FnMut(usize, usize, &str),
) -> Result<(), SynthError> {
    let w = build_writer(spec)?;
    let mut out = BufWriter::new(out);
    let n = w.tensors().len();
    w.write(&mut out, |i, d| {
        on_tensor(i, n, &d.name);
        tensor_bytes(spec.seed, i, d)
    })?;
    std::io::Write::flush(&mut out).map_err(GgufError::Write)?;
    Ok(())
}

/// The spec of the model the CLI runs when given no `-m`: tiny qwen3moe, 2 layers, BF16.
pub const DEFAULT_SPEC: SynthSpec = SynthSpec {
    arch: Arch::Qwen3Moe,
    preset: Preset::Tiny,
    n_layer: 2,
    dtype: GgmlType::BF16,
    seed: 0,
};

/// The embedded default model, generated in memory.
pub fn default_model() -> Result<GgufFile, SynthError> {
    Ok(GgufFile::from_bytes(to_bytes(&DEFAULT_SPEC)?)?)
}
