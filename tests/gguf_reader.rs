//! Reading the fixture files: header fields, metadata values and types, tensor tables, and
//! look-up by name (the K-quant files reorder their tensors).

mod common;

use common::{model_path, open};
use kiln::gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};
use kiln::model::{Arch, ModelConfig, RopeType};

#[test]
fn fixture_metadata_and_config() {
    let f = open("qwen3moe-q4_k_m");
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.architecture().unwrap(), "qwen3moe");
    assert_eq!(f.get_str("general.name").unwrap(), "fixture-tiny-qwen3moe");
    assert_eq!(f.get_u32("general.file_type").unwrap(), 15);
    assert_eq!(f.get_u32("general.quantization_version").unwrap(), 2);
    assert_eq!(f.get_f32("qwen3moe.rope.freq_base").unwrap(), 1e6);
    assert_eq!(
        f.get_f32("qwen3moe.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-6
    );
    assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), 512);
    assert_eq!(f.get_array("tokenizer.ggml.merges").unwrap().len(), 253);
    assert!(matches!(
        f.get("tokenizer.ggml.tokens"),
        Some(Value::Array(ValueType::String, _))
    ));
    // Wrong-type getters are errors naming the key.
    let e = f.get_str("qwen3moe.block_count").unwrap_err();
    assert!(e.to_string().contains("qwen3moe.block_count"), "{e}");
    assert!(f.get_u32("no.such.key").is_err());

    let cfg = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!(
        cfg,
        ModelConfig {
            arch: Arch::Qwen3Moe,
            n_layer: 2,
            hidden: 256,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 128,
            ff: 512,
            n_expert: 4,
            n_expert_used: 2,
            ff_exp: 256,
            ff_shexp: 0,
            rope_base: 1e6,
            rope: RopeType::Neox,
            rope_freq_scale: 1.0,
            eps: 1e-6,
            ctx: 4096,
            vocab: 512,
            norm_topk: true,
            qk_norm: true,
            qkv_bias: false,
        }
    );
}

#[test]
fn per_arch_rules() {
    let q3 = ModelConfig::from_gguf(&open("qwen3-f32")).unwrap();
    assert_eq!(
        (q3.arch, q3.n_head, q3.n_head_kv, q3.ff, q3.n_expert),
        (Arch::Qwen3, 4, 1, 512, 0)
    );
    assert!(q3.qk_norm && !q3.qkv_bias);
    let q2 = ModelConfig::from_gguf(&open("qwen2moe-f32")).unwrap();
    assert_eq!(
        (q2.arch, q2.n_head, q2.n_head_kv, q2.ff_exp, q2.ff_shexp),
        (Arch::Qwen2Moe, 2, 1, 256, 256)
    );
    assert!(!q2.norm_topk && !q2.qk_norm && q2.qkv_bias);
}

#[test]
fn k_quant_tensor_types_and_order() {
    let f = open("qwen3moe-q4_k_m");
    // llama.cpp's quantizer reorders tensors: output first.
    assert_eq!(f.tensor_infos()[0].name, "output.weight");
    let q6: Vec<&str> = f
        .tensor_infos()
        .iter()
        .filter(|t| t.dtype == GgmlType::Q6_K)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        q6,
        [
            "output.weight",
            "blk.1.attn_v.weight",
            "blk.1.ffn_down_exps.weight"
        ]
    );
    let count = |t| f.tensor_infos().iter().filter(|i| i.dtype == t).count();
    assert_eq!((count(GgmlType::Q4_K), count(GgmlType::F32)), (13, 11));
    let t = f.tensor("blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!(t.shape(), &[256, 256, 4]);
    assert_eq!(t.data.len(), 256 * 256 * 4 / 256 * 144);
    assert!(f.tensor("blk.2.attn_q.weight").is_err());
}

#[test]
fn every_fixture_file_opens_and_dequantizes() {
    let expect = [
        ("qwen3moe-f32", 27),
        ("qwen3moe-f16", 27),
        ("qwen3moe-bf16", 27),
        ("qwen3moe-q8_0", 27),
        ("qwen3moe-q4_k_m", 27),
        ("qwen3moe-q6_k", 27),
        ("qwen3-f32", 14),
        ("qwen2moe-f32", 20),
    ];
    for (name, n) in expect {
        let f = open(name);
        assert_eq!(f.tensor_infos().len(), n, "{name}");
        for info in f.tensor_infos() {
            let v = f.dequantize_f32(&info.name).unwrap();
            assert_eq!(v.len() as u64, info.n_elements(), "{name} {}", info.name);
            assert!(v.iter().all(|x| x.is_finite()), "{name} {}", info.name);
        }
        // Owned bytes parse to the same thing as the mapping.
        let owned = GgufFile::from_bytes(std::fs::read(model_path(name)).unwrap()).unwrap();
        assert_eq!(owned.metadata(), f.metadata());
        assert_eq!(owned.data_offset(), f.data_offset());
    }
}

#[test]
fn version_2_reads_like_version_3() {
    let mut bytes = std::fs::read(model_path("qwen3-f32")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.tensor_infos().len(), 14);
    assert_eq!(
        f.dequantize_f32("output.weight").unwrap(),
        open("qwen3-f32").dequantize_f32("output.weight").unwrap()
    );
}

/// A file with `general.alignment` = 64 puts its data on 64-byte boundaries and reads back.
#[test]
fn custom_alignment_and_every_value_type() {
    let mut w = GgufWriter::new();
    w.set_alignment(64);
    let values = [
        Value::U8(1),
        Value::I8(-1),
        Value::U16(2),
        Value::I16(-2),
        Value::U32(3),
        Value::I32(-3),
        Value::F32(0.5),
        Value::Bool(true),
        Value::String("s".into()),
        Value::U64(4),
        Value::I64(-4),
        Value::F64(0.25),
        Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::U32, vec![Value::U32(7)]),
                Value::Array(ValueType::String, vec![]),
            ],
        ),
    ];
    for (i, v) in values.iter().enumerate() {
        w.add_kv(format!("k{i}"), v.clone());
    }
    w.add_tensor("a", GgmlType::F32, vec![3]);
    w.add_tensor("b", GgmlType::F32, vec![2, 2]);
    let bytes = w
        .to_bytes(|i, d| {
            Ok((0..d.n_elements())
                .flat_map(|j| ((i * 10 + j as usize) as f32).to_le_bytes())
                .collect())
        })
        .unwrap();
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(f.get(&format!("k{i}")), Some(v));
    }
    assert_eq!(f.dequantize_f32("a").unwrap(), vec![0.0, 1.0, 2.0]);
    assert_eq!(f.dequantize_f32("b").unwrap(), vec![10.0, 11.0, 12.0, 13.0]);
    assert_eq!(f.tensor_infos()[1].file_offset % 64, 0);
}
