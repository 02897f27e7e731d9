//! The 256-element super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS (`ggml-common.h`,
//! `dequantize_row_*` in `ggml-quants.c`). Scales are applied as ggml does: the sub-block's
//! scale `dl = d * sc` first, then `dl * q` (minus `dmin * m` where the type has mins).

use super::f16_at;
use super::legacy::KVALUES_IQ4NL;
use crate::gguf::types::QK_K;

/// Q4_K's and Q5_K's 8 sub-block scales and mins, 6 bits each, packed into 12 bytes (ggml's
/// `get_scale_min_k4`): sub-blocks 0-3 use the low 6 bits of bytes 0-3 (scale) and 4-7 (min);
/// sub-blocks 4-7 take their low 4 bits from bytes 8-11 and their high 2 bits from the top bits
/// of bytes 0-7.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Element `e` of a 256-value block whose 2-bit quants fill 64 bytes as Q2_K and Q3_K do:
/// each half (128 values) has 32 bytes, and value `32·k + l` of the half is bits `2k..2k+2`
/// of its byte `l`.
fn crumb(qs: &[u8], e: usize) -> u8 {
    let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[32 * h + l] >> (2 * k)) & 3
}

/// block_q2_K { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }: 16 sub-blocks of 16, each with
/// a 4-bit scale (low nibble) and min (high nibble): x = (d * sc) * q - (dmin * m).
pub(super) fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, y) in y.iter_mut().enumerate() {
        let s = scales[e / 16];
        let dl = d * f32::from(s & 0x0F);
        let ml = dmin * f32::from(s >> 4);
        *y = dl * f32::from(crumb(qs, e)) - ml;
    }
}

/// block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }: 16 sub-blocks of 16 with
/// 6-bit signed scales (low 4 bits: nibbles of bytes 0-7, sub-blocks 0-7 low, 8-15 high;
/// high 2 bits: bits 2(i/4).. of byte 8 + i%4), minus 32. A value's 3-bit quant is its 2-bit
/// crumb minus 4 unless its bit `e / 32` of hmask[e % 32] is set: x = (d * sc) * q.
pub(super) fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let scale = |i: usize| {
        let low = if i < 8 { sc[i] & 0x0F } else { sc[i - 8] >> 4 };
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    };
    for (e, y) in y.iter_mut().enumerate() {
        let dl = d * f32::from(scale(e / 16));
        let hbit = (hmask[e % 32] >> (e / 32)) & 1;
        let q = crumb(qs, e) as i8 - if hbit == 0 { 4 } else { 0 };
        *y = dl * f32::from(q);
    }
}

/// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }: 8 sub-blocks of 32. Each 64
/// values share 32 bytes of qs: low nibbles are the first 32 values, high nibbles the next
/// 32. x = (d * scale) * q - (dmin * min).
pub(super) fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..16 + QK_K / 2]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
        for (l, y) in y.iter_mut().enumerate() {
            let q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
            *y = dl * f32::from(q) - ml;
        }
    }
}

/// block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }: Q4_K's layout plus a
/// 5th bit per value: value `l` of sub-block `j` takes bit `j` of qh[l].
pub(super) fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
        for (l, y) in y.iter_mut().enumerate() {
            let low = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
            let high = ((qh[l] >> j) & 1) << 4;
            *y = dl * f32::from(low | high) - ml;
        }
    }
}

/// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }: 256 values in two halves of
/// 128. In a half, value l (0..32) of each quarter takes its low 4 bits from ql (quarters 0/1:
/// low nibble of ql[l] / ql[l+32]; quarters 2/3: their high nibbles) and its high 2 bits from
/// qh[l] (bits 0-1, 2-3, 4-5, 6-7 for quarters 0-3); q is that 6-bit value - 32. Each 16
/// values have an i8 scale: x = (d * scale) * q.
pub(super) fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, QK_K / 2 + QK_K / 4 + QK_K / 16);
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

/// block_iq4_xs { f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; }: 8 sub-blocks of 32, each
/// with a 6-bit scale (low 4 bits: nibble `ib % 2` of scales_l[ib / 2]; high 2 bits: bits
/// 2ib.. of scales_h) minus 32, and IQ4_NL's levels: x = (d * (ls - 32)) * kvalues[q], value
/// `j < 16` of a sub-block the low nibble of its qs[j], `j + 16` the high nibble.
pub(super) fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * f32::from((low | (high << 4)) as i8 - 32);
        for (j, &q) in qs[16 * ib..16 * ib + 16].iter().enumerate() {
            y[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
            y[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}
