//! Malformed and hostile GGUF input: every case must come back as an `Err` with context,
//! never a panic, an out-of-bounds read or an allocation sized by an unchecked count.

mod common;

use common::{model_path, open, rewrite};
use kiln::gguf::{GgmlType, GgufError, GgufFile, Value};
use kiln::model::{ModelConfig, ModelError, Weights};

/// Hand-assembled GGUF pieces, so each field sits at a known place.
fn s(x: &[u8]) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(x);
    v
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(version.to_le_bytes());
    v.extend(n_tensors.to_le_bytes());
    v.extend(n_kv.to_le_bytes());
    v
}

fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = s(key.as_bytes());
    v.extend(ty.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn tensor_info(name: &str, shape: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut v = s(name.as_bytes());
    v.extend((shape.len() as u32).to_le_bytes());
    shape.iter().for_each(|d| v.extend(d.to_le_bytes()));
    v.extend(ty.to_le_bytes());
    v.extend(offset.to_le_bytes());
    v
}

/// A file from parts: header, kvs, tensor infos, padding to 32, then `data_len` zero bytes.
fn file(n_kv: u64, kvs: &[Vec<u8>], infos: &[Vec<u8>], data_len: usize) -> Vec<u8> {
    let mut v = header(3, infos.len() as u64, n_kv);
    kvs.iter().for_each(|k| v.extend(k));
    infos.iter().for_each(|t| v.extend(t));
    v.resize(v.len().div_ceil(32) * 32 + data_len, 0);
    v
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("malformed input was accepted"),
        Err(e) => e,
    }
}

fn assert_err_contains(bytes: Vec<u8>, needle: &str) {
    let e = parse_err(bytes);
    assert!(e.to_string().contains(needle), "{e:?} lacks {needle:?}");
}

#[test]
fn valid_hand_built_file_parses() {
    let f = GgufFile::from_bytes(file(
        1,
        &[kv("a", 4, &7u32.to_le_bytes())],
        &[tensor_info("t", &[4], 0, 0)],
        16,
    ))
    .unwrap();
    assert_eq!(f.get_u32("a").unwrap(), 7);
    assert_eq!(f.dequantize_f32("t").unwrap(), vec![0.0; 4]);
}

#[test]
fn bad_magic_and_versions() {
    let good = file(0, &[], &[], 0);
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(parse_err(b), GgufError::BadMagic { .. }));
    for v in [0u32, 1, 4, 3u32.swap_bytes()] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(parse_err(b), GgufError::UnsupportedVersion(x) if x == v));
    }
    assert!(matches!(parse_err(Vec::new()), GgufError::Truncated { .. }));
}

#[test]
fn absurd_counts_and_lengths() {
    for (nt, nkv) in [(u64::MAX, 0), (0, u64::MAX), (1 << 40, 0), (0, 1 << 33)] {
        let b = header(3, nt, nkv);
        assert!(matches!(parse_err(b), GgufError::CountTooLarge { .. }));
    }
    // Key length far past the end.
    let mut b = header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 16]);
    assert!(matches!(parse_err(b), GgufError::Truncated { .. }));
    // String value length past the end.
    let mut payload = (1u64 << 62).to_le_bytes().to_vec();
    payload.extend(b"xy");
    assert_err_contains(file(1, &[kv("k", 8, &payload)], &[], 0), "\"k\"");
    // Array counts that cannot fit: u8 x 2^40, string x 2^61, nested arrays x 2^59.
    for (elem, count) in [
        (0u32, 1u64 << 40),
        (8, 1 << 61),
        (9, 1 << 59),
        (10, u64::MAX),
    ] {
        let mut p = elem.to_le_bytes().to_vec();
        p.extend(count.to_le_bytes());
        let e = parse_err(file(1, &[kv("arr", 9, &p)], &[], 64));
        assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e:?}");
        assert!(e.to_string().contains("arr"), "{e}");
    }
}

#[test]
fn bad_metadata_values() {
    assert_err_contains(
        file(1, &[kv("k", 99, &[0; 8])], &[], 0),
        "unknown value type 99",
    );
    assert_err_contains(file(1, &[kv("k", 7, &[2])], &[], 0), "bool");
    let mut p = 99u32.to_le_bytes().to_vec();
    p.extend(1u64.to_le_bytes());
    assert_err_contains(file(1, &[kv("k", 9, &p)], &[], 8), "element type 99");
    let bad_utf8 = kv("k", 8, &s(&[0xFF, 0xFE]));
    assert_err_contains(file(1, &[bad_utf8], &[], 0), "UTF-8");
    let dup = kv("k", 4, &[0; 4]);
    assert!(matches!(
        parse_err(file(2, &[dup.clone(), dup], &[], 0)),
        GgufError::DuplicateKey(_)
    ));
    // Arrays nested 64 deep.
    let mut p = Vec::new();
    for _ in 0..64 {
        p.extend(9u32.to_le_bytes());
        p.extend(1u64.to_le_bytes());
    }
    p.extend(4u32.to_le_bytes());
    p.extend(0u64.to_le_bytes());
    assert_err_contains(file(1, &[kv("deep", 9, &p)], &[], 0), "nested");
    for align in [
        kv("general.alignment", 4, &0u32.to_le_bytes()),
        kv("general.alignment", 4, &3u32.to_le_bytes()),
        kv("general.alignment", 8, &s(b"32")),
    ] {
        assert_err_contains(file(1, &[align], &[], 0), "general.alignment");
    }
}

#[test]
fn bad_tensor_infos() {
    let one = |info: Vec<u8>, data: usize| parse_err(file(0, &[], &[info], data));
    for dims in [&[][..], &[1, 1, 1, 1, 1][..]] {
        assert!(matches!(
            one(tensor_info("t", dims, 0, 0), 64),
            GgufError::Malformed { .. }
        ));
    }
    for bad in [0u64, 1 << 63, u64::MAX] {
        let e = one(tensor_info("t", &[4, bad], 0, 0), 64);
        assert!(e.to_string().contains("\"t\""), "{e}");
    }
    let e = one(tensor_info("t", &[1 << 32, 1 << 32, 1 << 32], 0, 0), 64);
    assert!(matches!(e, GgufError::BadTensor { .. }), "{e:?}");
    // A number ggml retired (4, once Q4_2) and an unassigned one are unknown dtypes, named
    // with the tensor and the list of types kiln reads.
    for ty in [4u32, 99] {
        let e = one(tensor_info("w", &[32], ty, 0), 64);
        assert!(matches!(e, GgufError::UnknownDtype { ref tensor, .. } if tensor == "w"));
        assert!(e.to_string().contains("kiln reads F32, F16, Q4_0"), "{e}");
    }
    // IQ2_XXS (16) is a ggml type kiln does not run: the file parses (its layout is known),
    // and dequantizing the tensor names the type and says it is not supported.
    let g = GgufFile::from_bytes(file(0, &[], &[tensor_info("w", &[256], 16, 0)], 128)).unwrap();
    assert_eq!(g.tensor_infos()[0].dtype, GgmlType::IQ2_XXS);
    assert_eq!(g.tensor_infos()[0].n_bytes, 66);
    let e = g.dequantize_f32("w").unwrap_err().to_string();
    assert!(e.contains("IQ2_XXS") && e.contains("not supported"), "{e}");
    // Q8_0 rows must be whole blocks.
    assert!(matches!(
        one(tensor_info("q", &[31], 8, 0), 64),
        GgufError::BadTensor { .. }
    ));
    // Misaligned, past the end, overflowing.
    assert!(matches!(
        one(tensor_info("t", &[4], 0, 4), 64),
        GgufError::BadTensor { .. }
    ));
    for off in [64u64, 1 << 60, u64::MAX - 31] {
        let e = one(tensor_info("t", &[4], 0, off), 64);
        assert!(matches!(e, GgufError::TensorOutOfRange { .. }), "{e:?}");
    }
    assert!(matches!(
        one(tensor_info("t", &[32], 0, 0), 64),
        GgufError::TensorOutOfRange { .. }
    ));
    // Overlap and duplicate names.
    let two = |a: Vec<u8>, b: Vec<u8>| parse_err(file(0, &[], &[a, b], 128));
    let e = two(tensor_info("a", &[16], 0, 0), tensor_info("b", &[4], 0, 32));
    assert!(matches!(e, GgufError::TensorOverlap { .. }), "{e:?}");
    let e = two(tensor_info("a", &[4], 0, 0), tensor_info("a", &[4], 0, 32));
    assert!(matches!(e, GgufError::DuplicateTensor(_)));
}

/// Every prefix of the header region (metadata and tensor infos) and a sample of prefixes
/// into the data: each is an error (or, only past the last tensor's end, a valid file).
#[test]
fn truncated_at_every_header_offset_and_sampled_data_offsets() {
    let bytes = std::fs::read(model_path("qwen3moe-q4_k_m")).unwrap();
    let full = GgufFile::from_bytes(bytes.clone()).unwrap();
    let data_end = full
        .tensor_infos()
        .iter()
        .map(|t| t.file_offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    let header_end = full.data_offset() as usize;
    let sampled = (header_end..bytes.len()).step_by(4099);
    for n in (0..header_end).chain(sampled) {
        match GgufFile::from_bytes(bytes[..n].to_vec()) {
            Err(_) => {}
            Ok(_) => assert!(n >= data_end, "prefix of {n} bytes accepted"),
        }
    }
}

#[test]
fn unknown_and_wrong_architectures() {
    let f = open("qwen3-f32");
    let gemma = rewrite(&f, |w| {
        w.set_kv("general.architecture", Value::String("gemma3".into()))
    });
    let g = GgufFile::from_bytes(gemma).unwrap();
    let e = ModelConfig::from_gguf(&g).unwrap_err();
    assert!(
        matches!(e, ModelError::UnknownArch(ref a) if a == "gemma3"),
        "{e}"
    );
    assert!(e.to_string().contains("kiln supports llama, qwen2"), "{e}");
    // A qwen3 file claiming to be qwen3moe: its qwen3moe.* keys are missing.
    let moe = rewrite(&f, |w| {
        w.set_kv("general.architecture", Value::String("qwen3moe".into()))
    });
    let e = ModelConfig::from_gguf(&GgufFile::from_bytes(moe).unwrap()).unwrap_err();
    assert!(e.to_string().contains("qwen3moe."), "{e}");
    // A qwen3moe file with its keys renamed to qwen3: the config reads, the dense FFN
    // tensors are missing.
    let q3m = open("qwen3moe-f32");
    let relabeled = rewrite(&q3m, |w| {
        w.set_kv("general.architecture", Value::String("qwen3".into()));
        for (k, v) in q3m.metadata() {
            if let Some(rest) = k.strip_prefix("qwen3moe.") {
                w.remove_kv(k);
                w.add_kv(format!("qwen3.{rest}"), v.clone());
            }
        }
    });
    let g = GgufFile::from_bytes(relabeled).unwrap();
    let cfg = ModelConfig::from_gguf(&g).unwrap();
    let e = Weights::load(&g, &cfg).unwrap_err();
    assert!(e.to_string().contains("blk.0.ffn_gate.weight"), "{e}");
}

#[test]
fn shape_dtype_and_missing_tensors() {
    let f = open("qwen3-f32");
    let load = |bytes: Vec<u8>| -> ModelError {
        let g = GgufFile::from_bytes(bytes).unwrap();
        let cfg = ModelConfig::from_gguf(&g)
            .map_err(|e| panic!("{e}"))
            .unwrap();
        Weights::load(&g, &cfg).unwrap_err()
    };
    let edit_tensor = |name: &'static str, edit: fn(&mut kiln::gguf::TensorDesc)| {
        rewrite(&f, move |w| {
            w.tensors_mut()
                .iter_mut()
                .filter(|t| t.name == name)
                .for_each(edit)
        })
    };
    let e = load(edit_tensor("blk.0.attn_q.weight", |t| {
        t.shape = vec![256, 256]
    }));
    assert!(
        matches!(e, ModelError::ShapeMismatch { ref tensor, .. } if tensor == "blk.0.attn_q.weight")
    );
    let e = load(edit_tensor("blk.0.attn_norm.weight", |t| {
        t.dtype = GgmlType::Q8_0
    }));
    assert!(matches!(e, ModelError::DtypeMismatch { .. }), "{e}");
    let dropped = rewrite(&f, |w| {
        w.tensors_mut().retain(|t| t.name != "blk.0.attn_k.weight")
    });
    let e = load(dropped);
    assert!(e.to_string().contains("blk.0.attn_k.weight"), "{e}");
    // A matrix of a type kiln does not read is named with its ggml id.
    let e = load(edit_tensor("blk.0.ffn_up.weight", |t| {
        t.dtype = GgmlType::IQ2_XXS
    }));
    assert!(
        e.to_string()
            .contains("blk.0.ffn_up.weight (IQ2_XXS) (kiln runs F32, F16, Q4_0"),
        "{e}"
    );
}

#[test]
fn absurd_config_values() {
    let f = open("qwen3-f32");
    for (key, v) in [
        ("qwen3.block_count", Value::U32(1 << 30)),
        ("qwen3.attention.head_count_kv", Value::U32(3)),
        ("qwen3.attention.head_count", Value::U32(0)),
        ("qwen3.block_count", Value::String("1".into())),
        ("qwen3.rope.freq_base", Value::F32(-1.0)),
    ] {
        // A value of the wrong type fails at parse time, an absurd one when the config is read;
        // either way the message names the key.
        let e = match GgufFile::from_bytes(rewrite(&f, |w| w.set_kv(key, v.clone()))) {
            Err(e) => e.to_string(),
            Ok(g) => ModelConfig::from_gguf(&g).unwrap_err().to_string(),
        };
        let short = key.trim_start_matches("qwen3.");
        let short = short.trim_start_matches("attention.");
        assert!(e.contains(short), "{key} = {v:?}: {e}");
    }
    let g = GgufFile::from_bytes(rewrite(&f, |w| w.remove_kv("qwen3.block_count"))).unwrap();
    let e = ModelConfig::from_gguf(&g).unwrap_err();
    assert!(e.to_string().contains("qwen3.block_count"), "{e}");
}
