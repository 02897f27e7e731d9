//! Token embedding gather: one row of the table per token, widened to f32.
//!
//! Token ids are validated (< vocab) by the host before launch.

use crate::device::float::{bf16_to_f32, f16_to_f32};
use crate::device::*;

/// Grid: one block per token; threads stride over the hidden dimension.
#[inline(always)]
fn gather_rows<T: Copy>(
    table: In<T>,
    tokens: In<u32>,
    y: Out<f32>,
    hidden: u32,
    widen: impl Fn(T) -> f32,
) {
    let token = block_idx().x as usize;
    let hidden = hidden as usize;
    let src = tokens.at(token) as usize * hidden;
    let mut i = thread_idx().x as usize;
    while i < hidden {
        y.set(token * hidden + i, widen(table.at(src + i)));
        i += block_dim().x as usize;
    }
}

kernel! {
    /// Gather from an f32 table `[vocab][hidden]`.
    pub fn embed_rows_f32(table: In<f32>, tokens: In<u32>, y: Out<f32>, hidden: u32) {
        gather_rows(table, tokens, y, hidden, |v| v)
    }
}
kernel! {
    /// Gather from an f16 table (IEEE half bits).
    pub fn embed_rows_f16(table: In<u16>, tokens: In<u32>, y: Out<f32>, hidden: u32) {
        gather_rows(table, tokens, y, hidden, f16_to_f32)
    }
}
kernel! {
    /// Gather from a bf16 table (bfloat16 bits).
    pub fn embed_rows_bf16(table: In<u16>, tokens: In<u32>, y: Out<f32>, hidden: u32) {
        gather_rows(table, tokens, y, hidden, bf16_to_f32)
    }
}
