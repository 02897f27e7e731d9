//! kiln's dequantization against gguf-py's (`gguf.quants.dequantize`), bit for bit, on random
//! blocks of every type kiln reads, and kiln's ggml type table against gguf-py's
//! `GGML_QUANT_SIZES`. The vectors are `tests/data/dequant_vectors.gguf`, written by
//! `scripts/make_dequant_vectors.py` (its header says how the blocks were made).

use std::path::Path;

use kiln::gguf::types::TYPES;
use kiln::gguf::{GgmlType, GgufError, GgufFile};

fn vectors() -> GgufFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dequant_vectors.gguf");
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_supported_type_matches_gguf_py_bit_for_bit() {
    let f = vectors();
    let mut checked = Vec::new();
    for info in f.tensor_infos() {
        if info.name.ends_with(".want") {
            continue;
        }
        assert_eq!(info.name, info.dtype.name(), "tensor named after its type");
        let got = f.dequantize_f32(&info.name).unwrap();
        let want = f.dequantize_f32(&format!("{}.want", info.name)).unwrap();
        assert_eq!(got.len(), want.len(), "{}", info.name);
        let blocks = info.dtype.block_len().max(32);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{}: element {i} (block {}): kiln {g:e} ({:#010x}), gguf-py {w:e} ({:#010x})",
                info.name,
                i / blocks,
                g.to_bits(),
                w.to_bits()
            );
        }
        checked.push(info.dtype);
    }
    // Every type kiln claims to read has vectors (F32 is the vectors' own format).
    for t in TYPES
        .iter()
        .filter(|t| t.supported && t.ty != GgmlType::F32)
    {
        assert!(checked.contains(&t.ty), "no vectors for {}", t.name);
    }
}

#[test]
fn type_table_agrees_with_gguf_py() {
    let f = vectors();
    let rows = f.get_array("gguf_py.type_sizes").unwrap();
    assert!(rows.len() > 20);
    for row in rows {
        let row = row.as_str().unwrap();
        let parts: Vec<&str> = row.split(' ').collect();
        let [name, id, block_len, block_bytes] = parts[..] else {
            panic!("bad row {row:?}");
        };
        let id: u32 = id.parse().unwrap();
        let t = GgmlType::from_u32(id).unwrap_or_else(|| panic!("kiln lacks {row}"));
        assert_eq!(t.name(), name, "{row}");
        assert_eq!(t.block_len().to_string(), block_len, "{row}");
        // gguf-py sizes Q8_1 with two f32 (40 bytes); ggml's block_q8_1 has two f16 (36).
        if t != GgmlType::Q8_1 {
            assert_eq!(t.block_bytes().to_string(), block_bytes, "{row}");
        }
    }
    // The table has one row per variant and unique ids and names.
    for (i, a) in TYPES.iter().enumerate() {
        assert_eq!(a.ty.info().id, a.id);
        for b in &TYPES[i + 1..] {
            assert!(
                a.id != b.id && a.name != b.name && a.ty != b.ty,
                "{a:?} / {b:?}"
            );
        }
    }
}

#[test]
fn unsupported_and_unknown_types_are_named() {
    let e = kiln::gguf::dequant::dequantize(GgmlType::IQ2_XXS, &[0u8; 66]).unwrap_err();
    assert!(e.contains("IQ2_XXS (type 16)") && e.contains("Q4_1"), "{e}");
    let e = GgufError::UnsupportedDtype {
        tensor: "w".into(),
        dtype: GgmlType::TQ1_0,
    }
    .to_string();
    assert!(
        e.contains("TQ1_0 (type 34) is not supported")
            && e.contains("Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"),
        "{e}"
    );
    let e = GgufError::UnknownDtype {
        tensor: "w".into(),
        ty: 4,
    }
    .to_string();
    assert!(
        e.contains("unknown ggml type 4") && e.contains("IQ4_XS"),
        "{e}"
    );
    assert_eq!(GgmlType::Q4_1.describe(), "Q4_1 (type 3)");
    assert_eq!(GgmlType::parse("q5_k"), Some(GgmlType::Q5_K));
}
