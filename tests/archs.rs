//! The architecture table (`model::ARCHS`) and what it decides, on synthetic models: llama
//! (NORM RoPE, `rope_freqs`, optional biases), qwen2 (biases, tied LM head), RoPE scaling keys,
//! and errors that name what is unsupported.

use kiln::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use kiln::model::{ARCHS, Arch, ModelConfig, ModelError, RopeType, Weights};
use kiln::reference::{forward, ops};
use kiln::synth::{self, Preset, SynthSpec};

fn spec(arch: Arch) -> SynthSpec {
    SynthSpec {
        arch,
        preset: Preset::Tiny,
        n_layer: 1,
        dtype: GgmlType::F32,
        seed: 5,
    }
}

fn writer(arch: Arch) -> (GgufWriter, SynthSpec) {
    let s = spec(arch);
    let f = GgufFile::from_bytes(synth::to_bytes(&s).unwrap()).unwrap();
    (GgufWriter::copy_of(&f), s)
}

/// The synthetic file of `arch` with `edit` applied to its writer.
fn edited(arch: Arch, edit: impl FnOnce(&mut GgufWriter)) -> GgufFile {
    let (mut w, s) = writer(arch);
    edit(&mut w);
    let src = GgufFile::from_bytes(synth::to_bytes(&s).unwrap()).unwrap();
    let bytes = w
        .to_bytes(|_, d| Ok(src.tensor(&d.name).unwrap().data.to_vec()))
        .unwrap();
    GgufFile::from_bytes(bytes).unwrap()
}

#[test]
fn the_table_names_every_arch_once() {
    for a in &ARCHS {
        assert_eq!(Arch::parse(a.name), Some(a.arch));
        assert_eq!(a.arch.name(), a.name);
        assert_eq!(ARCHS.iter().filter(|b| b.arch == a.arch).count(), 1);
    }
    // As llama.cpp's llama_model_rope_type.
    assert_eq!(Arch::Llama.rope(), RopeType::Norm);
    for a in [Arch::Qwen2, Arch::Qwen3, Arch::Qwen3Moe, Arch::Qwen2Moe] {
        assert_eq!(a.rope(), RopeType::Neox, "{a}");
    }
    let e = ModelError::UnknownArch("gemma3".into()).to_string();
    assert!(
        e.contains("\"gemma3\"") && e.contains("llama, qwen2, qwen3"),
        "{e}"
    );
}

#[test]
fn llama_and_qwen2_configs_and_weights() {
    let f = GgufFile::from_bytes(synth::to_bytes(&spec(Arch::Llama)).unwrap()).unwrap();
    let cfg = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!((cfg.arch, cfg.rope), (Arch::Llama, RopeType::Norm));
    assert!(!cfg.qkv_bias && !cfg.qk_norm && cfg.ff == 512);
    let w = Weights::load(&f, &cfg).unwrap();
    assert!(w.output.is_some() && w.rope_freqs.is_some());
    assert_eq!(w.lm_head().name, "output.weight");
    // Frequencies: base^(-2i/d) / factor_i.
    let freqs = w.rope_frequencies(&cfg);
    let plain = ops::rope_inv_freq(f64::from(cfg.rope_base), cfg.head_dim);
    let factors = &w.rope_freqs.as_ref().unwrap().data;
    for i in 0..cfg.head_dim / 2 {
        assert_eq!(freqs[i], plain[i] / f64::from(factors[i]));
    }

    let f = GgufFile::from_bytes(synth::to_bytes(&spec(Arch::Qwen2)).unwrap()).unwrap();
    let cfg = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!((cfg.arch, cfg.rope), (Arch::Qwen2, RopeType::Neox));
    assert!(cfg.qkv_bias && !cfg.qk_norm);
    let w = Weights::load(&f, &cfg).unwrap();
    assert!(w.output.is_none() && w.rope_freqs.is_none());
    assert_eq!(w.lm_head().name, "token_embd.weight");
    assert!(w.layers[0].bq.is_some() && w.layers[0].bv.is_some());
    let logits = forward(&cfg, &w, &[1, 2, 3], false).unwrap();
    assert!(logits.last().iter().all(|v| v.is_finite()));
}

/// llama's Q/K/V biases are optional (llama.cpp: TENSOR_NOT_REQUIRED): a file with them loads
/// them, and they change the logits.
#[test]
fn llama_biases_are_optional() {
    let (mut w, s) = writer(Arch::Llama);
    for (name, len) in [("q", 512u64), ("k", 256), ("v", 256)] {
        w.add_tensor(format!("blk.0.attn_{name}.bias"), GgmlType::F32, vec![len]);
    }
    let src = GgufFile::from_bytes(synth::to_bytes(&s).unwrap()).unwrap();
    let bytes = w
        .to_bytes(|_, d| match src.tensor(&d.name) {
            Ok(t) => Ok(t.data.to_vec()),
            Err(_) => Ok((0..d.n_elements())
                .flat_map(|i| (0.01 * (i % 7) as f32).to_le_bytes())
                .collect()),
        })
        .unwrap();
    let f = GgufFile::from_bytes(bytes).unwrap();
    let cfg = ModelConfig::from_gguf(&f).unwrap();
    assert!(cfg.qkv_bias);
    let w = Weights::load(&f, &cfg).unwrap();
    assert!(w.layers[0].bk.is_some());
    let plain_cfg = ModelConfig::from_gguf(&src).unwrap();
    let plain = Weights::load(&src, &plain_cfg).unwrap();
    let a = forward(&cfg, &w, &[7, 8], false).unwrap();
    let b = forward(&plain_cfg, &plain, &[7, 8], false).unwrap();
    assert_ne!(a.last(), b.last());
}

#[test]
fn rope_scaling_keys() {
    let linear = edited(Arch::Llama, |w| {
        w.add_kv("llama.rope.scaling.type", Value::String("linear".into()));
        w.add_kv("llama.rope.scaling.factor", Value::F32(4.0));
    });
    let cfg = ModelConfig::from_gguf(&linear).unwrap();
    assert_eq!(cfg.rope_freq_scale, 0.25);
    let yarn = edited(Arch::Llama, |w| {
        w.add_kv("llama.rope.scaling.type", Value::String("yarn".into()));
    });
    let e = ModelConfig::from_gguf(&yarn).unwrap_err().to_string();
    assert!(e.contains("\"yarn\" is not supported"), "{e}");
    let partial = edited(Arch::Qwen2, |w| {
        w.add_kv("qwen2.rope.dimension_count", Value::U32(64));
    });
    let e = ModelConfig::from_gguf(&partial).unwrap_err().to_string();
    assert!(e.contains("partial RoPE"), "{e}");
    // freq_base defaults to 10000, as in llama.cpp.
    let no_base = edited(Arch::Llama, |w| w.remove_kv("llama.rope.freq_base"));
    assert_eq!(ModelConfig::from_gguf(&no_base).unwrap().rope_base, 10000.0);
}

#[test]
fn bad_rope_freqs_are_errors() {
    let (w, s) = writer(Arch::Llama);
    let src = GgufFile::from_bytes(synth::to_bytes(&s).unwrap()).unwrap();
    let bytes = w
        .to_bytes(|_, d| {
            let mut data = src.tensor(&d.name).unwrap().data.to_vec();
            if d.name == "rope_freqs.weight" {
                data[8..12].copy_from_slice(&0f32.to_le_bytes());
            }
            Ok(data)
        })
        .unwrap();
    let f = GgufFile::from_bytes(bytes).unwrap();
    let cfg = ModelConfig::from_gguf(&f).unwrap();
    let e = Weights::load(&f, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("rope_freqs.weight[2] = 0 must be positive"),
        "{e}"
    );
}
