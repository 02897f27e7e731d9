//! Conversion between ggml's stored element formats and f32, following ggml's block layouts
//! (`ggml-common.h`) and reference (de)quantisers (`ggml-quants.c`).
//!
//! Dequantisation reproduces ggml's `to_float` arithmetic exactly (float32 products, in the
//! same order; Rust never contracts `a * b - c` into an FMA), so it agrees bit for bit with
//! gguf-py, which the fixtures verified against ggml.

use half::{bf16, f16};

use super::types::{GgmlType, QK_K, QK8_0};

/// Dequantizes `data` (a whole number of blocks of `dtype`) to f32; an error for the types
/// kiln does not support (see [`GgmlType::SUPPORTED`]).
pub fn dequantize(dtype: GgmlType, data: &[u8]) -> Result<Vec<f32>, String> {
    if !dtype.is_supported() {
        return Err(unsupported(dtype));
    }
    let bb = dtype.block_bytes();
    if !data.len().is_multiple_of(bb) {
        return Err(format!(
            "{} bytes is not a whole number of {bb}-byte blocks",
            data.len()
        ));
    }
    let n_blocks = data.len() / bb;
    let mut out = Vec::with_capacity(n_blocks * dtype.block_len());
    let blocks = data.chunks_exact(bb);
    match dtype {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q8_0 => blocks.for_each(|b| dequant_q8_0_block(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| dequant_q4_k_block(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| dequant_q6_k_block(b, &mut out)),
        other => return Err(unsupported(other)),
    }
    Ok(out)
}

fn unsupported(dtype: GgmlType) -> String {
    format!(
        "type {dtype} is not supported (kiln runs {})",
        GgmlType::supported_list()
    )
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// block_q8_0 { f16 d; i8 qs[32]; }: x = d * q.
fn dequant_q8_0_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..2 + QK8_0].iter().map(|&q| d * f32::from(q as i8)));
}

/// Q4_K's 8 sub-block scales and mins, 6 bits each, packed into 12 bytes (ggml's
/// `get_scale_min_k4`): sub-blocks 0-3 use the low 6 bits of bytes 0-3 (scale) and 4-7 (min);
/// sub-blocks 4-7 take their low 4 bits from bytes 8-11 and their high 2 bits from the top bits
/// of bytes 0-7.
fn q4_k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }: 256 values in 8 sub-blocks
/// of 32. Each 64 values share 32 bytes of qs: low nibbles are the first 32 values, high
/// nibbles the next 32. x = (d * scale) * q - (dmin * min).
fn dequant_q4_k_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..16 + QK_K / 2];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = q4_k_scale_min(2 * chunk, scales);
        let (sc2, m2) = q4_k_scale_min(2 * chunk + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        out.extend(q.iter().map(|&v| d1 * f32::from(v & 0x0F) - min1));
        out.extend(q.iter().map(|&v| d2 * f32::from(v >> 4) - min2));
    }
}

/// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }: 256 values in two halves of
/// 128. In a half, value l (0..32) of each quarter takes its low 4 bits from ql (quarters 0/1:
/// low nibble of ql[l] / ql[l+32]; quarters 2/3: their high nibbles) and its high 2 bits from
/// qh[l] (bits 0-1, 2-3, 4-5, 6-7 for quarters 0-3); q is that 6-bit value - 32. Each 16
/// values have an i8 scale: x = (d * scale) * q.
fn dequant_q6_k_block(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, QK_K / 2 + QK_K / 4 + QK_K / 16);
    let base = out.len();
    out.resize(base + QK_K, 0.0);
    let y = &mut out[base..];
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[QK_K / 2 + 32 * half..QK_K / 2 + 32 * half + 32];
        let sc = &b[QK_K / 2 + QK_K / 4 + 8 * half..QK_K / 2 + QK_K / 4 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
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
        other => Err(format!("quantizing to {other} is not supported")),
    }
}
