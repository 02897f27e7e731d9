//! Synthetic models: written, read back bit for bit, laid out like the fixtures.

mod common;

use std::collections::BTreeSet;

use common::{open, temp_path};
use kiln::gguf::{GgmlType, GgufFile};
use kiln::model::{Arch, ModelConfig, Weights};
use kiln::reference::forward;
use kiln::synth::{self, Preset, SynthSpec};

fn spec(arch: Arch, dtype: GgmlType, n_layer: usize) -> SynthSpec {
    SynthSpec {
        arch,
        preset: Preset::Tiny,
        n_layer,
        dtype,
        seed: 42,
    }
}

#[test]
fn tensors_read_back_bit_for_bit() {
    for dtype in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
        let s = spec(Arch::Qwen2Moe, dtype, 1);
        let f = GgufFile::from_bytes(synth::to_bytes(&s).unwrap()).unwrap();
        let w = synth::build_writer(&s).unwrap();
        assert_eq!(f.tensor_infos().len(), w.tensors().len());
        for (i, d) in w.tensors().iter().enumerate() {
            let t = f.tensor(&d.name).unwrap();
            assert_eq!((t.dtype(), t.shape()), (d.dtype, d.shape.as_slice()));
            assert!(
                t.data == synth::tensor_bytes(s.seed, i, d).unwrap(),
                "{}",
                d.name
            );
            if d.dtype == GgmlType::F32 {
                assert_eq!(
                    t.dequantize_f32().unwrap(),
                    synth::tensor_values(s.seed, i, d)
                );
            }
        }
    }
}

#[test]
fn same_names_keys_and_config_as_the_fixtures() {
    for (arch, fixture) in [
        (Arch::Qwen3Moe, "qwen3moe-f32"),
        (Arch::Qwen3, "qwen3-f32"),
        (Arch::Qwen2Moe, "qwen2moe-f32"),
        (Arch::Qwen3Moe, "qwen3moe-q8_0"),
    ] {
        let fx = open(fixture);
        let n_layer = fx.get_u32(&format!("{arch}.block_count")).unwrap() as usize;
        let dtype = if fixture.ends_with("q8_0") {
            GgmlType::Q8_0
        } else {
            GgmlType::F32
        };
        let f =
            GgufFile::from_bytes(synth::to_bytes(&spec(arch, dtype, n_layer)).unwrap()).unwrap();
        let keys = |g: &GgufFile| {
            g.metadata()
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(keys(&f), keys(&fx), "{fixture}: metadata keys");
        for (k, v) in fx.metadata() {
            if k != "general.name" {
                assert_eq!(
                    f.get(k).map(|x| x.value_type()),
                    Some(v.value_type()),
                    "{k}"
                );
            }
        }
        for k in [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type",
        ] {
            assert_eq!(f.get(k), fx.get(k), "{fixture}: {k}");
        }
        let tensors = |g: &GgufFile| {
            g.tensor_infos()
                .iter()
                .map(|t| (t.name.clone(), t.dtype.name(), t.shape.clone()))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(tensors(&f), tensors(&fx), "{fixture}: tensor table");
        assert_eq!(
            ModelConfig::from_gguf(&f).unwrap(),
            ModelConfig::from_gguf(&fx).unwrap(),
            "{fixture}: config"
        );
    }
}

#[test]
fn activations_stay_order_one() {
    for arch in [Arch::Qwen3, Arch::Qwen3Moe, Arch::Qwen2Moe] {
        let f =
            GgufFile::from_bytes(synth::to_bytes(&spec(arch, GgmlType::BF16, 3)).unwrap()).unwrap();
        let cfg = ModelConfig::from_gguf(&f).unwrap();
        let w = Weights::load(&f, &cfg).unwrap();
        let logits = forward(&cfg, &w, &[1, 2, 3, 300, 509], false).unwrap();
        let rms = (logits.last().iter().map(|v| v * v).sum::<f32>() / cfg.vocab as f32).sqrt();
        assert!((0.2..5.0).contains(&rms), "{arch}: logit rms {rms}");
    }
}

#[test]
fn write_file_equals_in_memory_and_seeds_differ() {
    let s = spec(Arch::Qwen3, GgmlType::Q8_0, 1);
    let path = temp_path("synth.gguf");
    let mut seen = 0;
    synth::write_file(&s, &path, &mut |_, _, _| seen += 1).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(on_disk, synth::to_bytes(&s).unwrap());
    assert_eq!(seen, 14);
    let other = synth::to_bytes(&SynthSpec { seed: 43, ..s }).unwrap();
    assert_ne!(on_disk, other);
}

#[test]
fn large_preset_layout() {
    for arch in [Arch::Qwen3, Arch::Qwen3Moe, Arch::Qwen2Moe] {
        let s = SynthSpec {
            arch,
            preset: Preset::Qwen3_30bA3b,
            n_layer: 48,
            dtype: GgmlType::Q8_0,
            seed: 0,
        };
        let c = synth::config(&s);
        assert_eq!(
            (c.hidden, c.n_head, c.n_head_kv, c.head_dim, c.vocab),
            (2048, 32, 4, 128, 151936)
        );
        let w = synth::build_writer(&s).unwrap();
        let find = |n: &str| {
            w.tensors()
                .iter()
                .find(|t| t.name == n)
                .unwrap()
                .shape
                .clone()
        };
        assert_eq!(find("token_embd.weight"), vec![2048, 151936]);
        assert_eq!(find("blk.47.attn_q.weight"), vec![2048, 4096]);
        match arch {
            Arch::Qwen3 => assert_eq!(find("blk.0.ffn_up.weight"), vec![2048, 6144]),
            _ => assert_eq!(find("blk.0.ffn_down_exps.weight"), vec![768, 2048, 128]),
        }
        if arch == Arch::Qwen2Moe {
            assert_eq!(find("blk.0.ffn_up_shexp.weight"), vec![2048, 3072]);
        }
        let params: u64 = w.tensors().iter().map(|t| t.n_elements()).sum();
        println!(
            "{arch} 48 layers: {:.2} B parameters, {:.1} GB",
            params as f64 / 1e9,
            w.file_len() as f64 / 1e9
        );
        if arch == Arch::Qwen3Moe {
            // Qwen3-30B-A3B has 30.5 B parameters.
            assert!((30.0e9..31.0e9).contains(&(params as f64)), "{params}");
        }
    }
    let bad = SynthSpec {
        dtype: GgmlType::Q4_K,
        ..spec(Arch::Qwen3, GgmlType::F32, 1)
    };
    assert!(synth::build_writer(&bad).is_err());
    assert!(synth::build_writer(&spec(Arch::Qwen3, GgmlType::F32, 0)).is_err());
}

#[test]
fn default_model_runs() {
    let f = synth::default_model().unwrap();
    let cfg = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!((cfg.arch, cfg.n_layer), (Arch::Qwen3Moe, 2));
    assert_eq!(
        f.tensor("blk.0.attn_q.weight").unwrap().dtype(),
        GgmlType::BF16
    );
    let w = Weights::load(&f, &cfg).unwrap();
    assert!(
        forward(&cfg, &w, &[5, 6], true)
            .unwrap()
            .data
            .iter()
            .all(|v| v.is_finite())
    );
}
