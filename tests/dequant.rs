//! Dequantization of each stored type against independent evaluations: hand-built blocks whose
//! values are computed here element by element from the bit layout, exact re-quantization of
//! the fixtures' F32 weights (gguf-py made the F16/BF16/Q8_0 files), and the F32 file vs the
//! quantized files within each type's quantization error.

mod common;

use common::{open, rel_l2_f32};
use half::{bf16, f16};
use kiln::gguf::dequant::{dequantize, quantize};
use kiln::gguf::{GgmlType, GgufFile};

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

#[test]
fn f32_f16_bf16_known_bits() {
    let f32s: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(dequantize(GgmlType::F32, &f32s).unwrap(), vec![1.5, -2.0]);
    // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x0001 = 2^-24 (subnormal).
    let f16s = [0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00];
    assert_eq!(
        dequantize(GgmlType::F16, &f16s).unwrap(),
        vec![1.0, -2.0, 2f32.powi(-24)]
    );
    // bf16 is the top half of an f32: 0x3FC0 = 1.5, 0xC040 = -3.0.
    let bf16s = [0xC0, 0x3F, 0x40, 0xC0];
    assert_eq!(dequantize(GgmlType::BF16, &bf16s).unwrap(), vec![1.5, -3.0]);
}

#[test]
fn q8_0_hand_block() {
    let mut block = f16_bytes(0.5).to_vec();
    block.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let want: Vec<f32> = (0..32).map(|i| 0.5 * (i - 16) as f32).collect();
    assert_eq!(dequantize(GgmlType::Q8_0, &block).unwrap(), want);
}

/// Element `i` of a Q4_K block, from the layout description: sub-block j = i / 32 has a 6-bit
/// scale and min (j < 4: low 6 bits of bytes j and j+4 of `scales`; j >= 4: low/high nibble of
/// byte j+4 plus the top 2 bits of bytes j-4 / j); its 4-bit quant is the low nibble of
/// qs[32 * (j / 2) + i % 32] for even j, the high nibble for odd j.
fn q4_k_element(block: &[u8], i: usize) -> f32 {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let dmin = f16::from_le_bytes([block[2], block[3]]).to_f32();
    let s = &block[4..16];
    let j = i / 32;
    let (sc, m) = if j < 4 {
        (s[j] & 0x3F, s[j + 4] & 0x3F)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    let byte = block[16 + 32 * (j / 2) + i % 32];
    let q = if j.is_multiple_of(2) {
        byte & 0x0F
    } else {
        byte >> 4
    };
    d * f32::from(sc) * f32::from(q) - dmin * f32::from(m)
}

/// Element `i` of a Q6_K block: half h = i / 128, r = i % 128, quarter k = r / 32, l = r % 32;
/// low 4 bits from ql[64h + l + 32 (k % 2)] (low nibble for k < 2, else high), high 2 bits
/// from bits 2k..2k+2 of qh[32h + l]; scale scales[8h + 2k + l / 16]; q - 32 times d * scale.
fn q6_k_element(block: &[u8], i: usize) -> f32 {
    let (h, r) = (i / 128, i % 128);
    let (k, l) = (r / 32, r % 32);
    let ql = block[64 * h + l + 32 * (k % 2)];
    let low = if k < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (block[128 + 32 * h + l] >> (2 * k)) & 3;
    let q = i32::from(low | (high << 4)) - 32;
    let scale = block[192 + 8 * h + 2 * k + l / 16] as i8;
    let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
    d * f32::from(scale) * q as f32
}

/// Pseudo-random bytes with the f16 fields set to modest values.
fn random_block(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = kiln::rng::Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

#[test]
fn q4_k_hand_blocks() {
    for seed in 0..20 {
        let mut b = random_block(144, seed);
        b[0..2].copy_from_slice(&f16_bytes(0.013));
        b[2..4].copy_from_slice(&f16_bytes(0.002));
        let got = dequantize(GgmlType::Q4_K, &b).unwrap();
        for (i, &g) in got.iter().enumerate() {
            assert_eq!(g, q4_k_element(&b, i), "seed {seed} element {i}");
        }
    }
}

#[test]
fn q6_k_hand_blocks() {
    for seed in 0..20 {
        let mut b = random_block(210, seed);
        b[208..210].copy_from_slice(&f16_bytes(0.0071));
        let got = dequantize(GgmlType::Q6_K, &b).unwrap();
        for (i, &g) in got.iter().enumerate() {
            assert_eq!(g, q6_k_element(&b, i), "seed {seed} element {i}");
        }
    }
}

#[test]
fn partial_blocks_are_errors() {
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 33]).is_err());
    assert!(dequantize(GgmlType::Q4_K, &[0u8; 143]).is_err());
    assert!(dequantize(GgmlType::Q6_K, &[0u8; 211]).is_err());
    assert!(dequantize(GgmlType::F32, &[0u8; 3]).is_err());
}

/// gguf-py wrote the F16, BF16 and Q8_0 fixtures from the F32 weights; kiln's quantizer must
/// produce the same bytes (round-to-nearest-even halves; Q8_0 d = amax/127, round half away).
#[test]
fn quantize_reproduces_gguf_py_files_bit_for_bit() {
    let f32_file = open("qwen3moe-f32");
    for (name, dtype) in [
        ("qwen3moe-f16", GgmlType::F16),
        ("qwen3moe-bf16", GgmlType::BF16),
        ("qwen3moe-q8_0", GgmlType::Q8_0),
    ] {
        let q = open(name);
        let mut n = 0;
        for info in q.tensor_infos().iter().filter(|t| t.dtype == dtype) {
            let src = f32_file.dequantize_f32(&info.name).unwrap();
            let ours = quantize(dtype, &src).unwrap();
            let theirs = q.tensor(&info.name).unwrap().data;
            assert!(ours == theirs, "{name} {}: bytes differ", info.name);
            n += 1;
        }
        assert_eq!(n, 16, "{name}: expected 16 {dtype} tensors");
    }
}

/// Each quantized file's tensors vs the F32 originals, within the type's error: per element
/// for F16 (2^-11 relative), BF16 (2^-8) and Q8_0 (half a step d/2 plus the f16 rounding of
/// d: 0.5 d + 127 d 2^-11 < 0.57 d); relative L2 for the K-quants (their error depends on the
/// quantizer's search: bounds are a little above what llama.cpp's quantizer achieves here).
#[test]
fn quantized_files_agree_with_f32_within_quantization_error() {
    let f32_file = open("qwen3moe-f32");
    let check = |name: &str| {
        let q: GgufFile = open(name);
        for info in q.tensor_infos() {
            let want = f32_file.dequantize_f32(&info.name).unwrap();
            let got = q.dequantize_f32(&info.name).unwrap();
            match info.dtype {
                GgmlType::F32 => assert_eq!(got, want, "{name} {}", info.name),
                GgmlType::F16 | GgmlType::BF16 => {
                    let rel = if info.dtype == GgmlType::F16 {
                        2f32.powi(-11)
                    } else {
                        2f32.powi(-8)
                    };
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= w.abs() * rel + 1e-7,
                            "{name} {}",
                            info.name
                        );
                    }
                }
                GgmlType::Q8_0 => {
                    for (gb, wb) in got.chunks(32).zip(want.chunks(32)) {
                        let amax = wb.iter().fold(0f32, |m, v| m.max(v.abs()));
                        for (g, w) in gb.iter().zip(wb) {
                            assert!((g - w).abs() <= amax / 127.0 * 0.57 + 1e-7, "{name}");
                        }
                    }
                }
                GgmlType::Q4_K | GgmlType::Q6_K => {
                    let err = rel_l2_f32(&got, &want);
                    let bound = if info.dtype == GgmlType::Q4_K {
                        0.12
                    } else {
                        0.03
                    };
                    assert!(err < bound, "{name} {}: rel L2 {err:.3e}", info.name);
                }
                other => panic!("{name} {}: the fixtures hold no {other}", info.name),
            }
        }
    };
    for name in [
        "qwen3moe-f16",
        "qwen3moe-bf16",
        "qwen3moe-q8_0",
        "qwen3moe-q4_k_m",
        "qwen3moe-q6_k",
    ] {
        check(name);
    }
}

#[test]
fn q8_0_round_trip_error_is_half_a_step() {
    let mut rng = kiln::rng::Rng::new(3);
    let x = rng.normal_vec(32 * 64, 1.0);
    let back = dequantize(GgmlType::Q8_0, &quantize(GgmlType::Q8_0, &x).unwrap()).unwrap();
    for (xb, bb) in x.chunks(32).zip(back.chunks(32)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in xb.iter().zip(bb) {
            assert!((a - b).abs() <= amax / 127.0 * 0.57);
        }
    }
    // bf16 round trip is exact on bf16-representable values.
    let vals: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    let bytes = quantize(GgmlType::BF16, &vals).unwrap();
    assert_eq!(dequantize(GgmlType::BF16, &bytes).unwrap(), vals);
}
