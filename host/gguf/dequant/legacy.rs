//! The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL (`ggml-common.h`,
//! `dequantize_row_*` in `ggml-quants.c`). In each, element `j < 16` of a block takes the low
//! nibble of `qs[j]` and element `j + 16` the high nibble (Q8_0: one byte per element).

use super::f16_at;
use crate::gguf::types::QK8_0;

/// IQ4_NL's (and IQ4_XS's) non-linear 4-bit levels (ggml's `kvalues_iq4nl`).
pub(super) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The two nibbles of `qs[j]` as elements `j` and `j + 16`.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    qs.iter()
        .enumerate()
        .flat_map(|(j, &q)| [(j, q & 0x0F), (j + 16, q >> 4)])
}

/// The 5th bits of Q5_0 / Q5_1: bit `j` of the little-endian u32 `qh` belongs to element `j`.
fn fifth_bit(qh: &[u8], j: usize) -> u8 {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    (((qh >> j) & 1) as u8) << 4
}

/// block_q4_0 { f16 d; u8 qs[16]; }: x = d * (q - 8).
pub(super) fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, q) in nibbles(&b[2..18]) {
        y[j] = d * f32::from(q as i8 - 8);
    }
}

/// block_q4_1 { f16 d; f16 m; u8 qs[16]; }: x = d * q + m.
pub(super) fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, q) in nibbles(&b[4..20]) {
        y[j] = d * f32::from(q) + m;
    }
}

/// block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }: x = d * (q - 16), q = nibble | bit << 4.
pub(super) fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = &b[2..6];
    for (j, q) in nibbles(&b[6..22]) {
        y[j] = d * f32::from((q | fifth_bit(qh, j)) as i8 - 16);
    }
}

/// block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }: x = d * q + m.
pub(super) fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = &b[4..8];
    for (j, q) in nibbles(&b[8..24]) {
        y[j] = d * f32::from(q | fifth_bit(qh, j)) + m;
    }
}

/// block_q8_0 { f16 d; i8 qs[32]; }: x = d * q.
pub(super) fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..2 + QK8_0]) {
        *y = d * f32::from(q as i8);
    }
}

/// block_iq4_nl { f16 d; u8 qs[16]; }: x = d * kvalues[q].
pub(super) fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, q) in nibbles(&b[2..18]) {
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q)]);
    }
}
