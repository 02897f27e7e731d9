//! Conversion between ggml's stored element formats and f32, following ggml's block layouts
//! (`ggml-common.h`) and reference (de)quantisers (`ggml-quants.c`): the block decoders are in
//! `legacy` (32-element blocks) and `kquant` (256-element super-blocks).
//!
//! Dequantisation reproduces ggml's `to_float` arithmetic exactly (float32 products, in the
//! same order; Rust never contracts `a * b - c` into an FMA), so it agrees bit for bit with
//! gguf-py (`gguf.quants`; `tests/dequant_vectors.rs` checks every type on random blocks), which
//! the fixtures verified against ggml.

mod kquant;
mod legacy;

use half::{bf16, f16};

use super::types::{GgmlType, QK8_0};

/// Dequantizes `data` (a whole number of blocks of `dtype`) to f32. Types kiln does not read
/// (`GgmlType::supported`) are an error naming the type and listing those it reads.
pub fn dequantize(dtype: GgmlType, data: &[u8]) -> Result<Vec<f32>, String> {
    let block: fn(&[u8], &mut [f32]) = match dtype {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, y| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => legacy::q4_0,
        GgmlType::Q4_1 => legacy::q4_1,
        GgmlType::Q5_0 => legacy::q5_0,
        GgmlType::Q5_1 => legacy::q5_1,
        GgmlType::Q8_0 => legacy::q8_0,
        GgmlType::IQ4_NL => legacy::iq4_nl,
        GgmlType::Q2_K => kquant::q2_k,
        GgmlType::Q3_K => kquant::q3_k,
        GgmlType::Q4_K => kquant::q4_k,
        GgmlType::Q5_K => kquant::q5_k,
        GgmlType::Q6_K => kquant::q6_k,
        GgmlType::IQ4_XS => kquant::iq4_xs,
        _ => {
            return Err(format!(
                "ggml type {} is not supported (kiln reads {})",
                dtype.describe(),
                GgmlType::supported_list()
            ));
        }
    };
    let (bb, bl) = (dtype.block_bytes(), dtype.block_len());
    if !data.len().is_multiple_of(bb) {
        return Err(format!(
            "{} bytes is not a whole number of {bb}-byte blocks",
            data.len()
        ));
    }
    let mut out = vec![0.0; data.len() / bb * bl];
    for (b, y) in data.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        block(b, y);
    }
    Ok(out)
}

/// The little-endian f16 at byte `i`, widened (exactly) to f32.
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Encodes f32 values as `dtype` (F32, F16, BF16 or Q8_0; the K-quants are read-only here).
/// F16 and BF16 round to nearest even; Q8_0 as ggml's reference quantiser: per block of 32,
/// d = amax / 127 stored as f16, q = round(x * (1/d)) (half away from zero), q = 0 when
/// amax = 0.
pub fn quantize(dtype: GgmlType, x: &[f32]) -> Result<Vec<u8>, String> {
    match dtype {
        GgmlType::F32 => Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlType::F16 => Ok(x
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect()),
        GgmlType::BF16 => Ok(x
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect()),
        GgmlType::Q8_0 => {
            if !x.len().is_multiple_of(QK8_0) {
                return Err(format!(
                    "{} values is not a whole number of Q8_0 blocks",
                    x.len()
                ));
            }
            let mut out = Vec::with_capacity(x.len() / QK8_0 * GgmlType::Q8_0.block_bytes());
            for block in x.chunks_exact(QK8_0) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                // As ggml's quantize_row_q8_0_ref (and gguf-py): multiply by the reciprocal,
                // which rounds differently from x / d on exact-half cases.
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                // `as i8` saturates, and |x * id| <= 127 up to rounding anyway.
                out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
            }
            Ok(out)
        }
        _ => Err(format!("quantizing to {dtype} is not supported")),
    }
}
