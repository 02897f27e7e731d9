//! NEOX ("rotate half") rotary position embedding, in place, as Qwen models use it: dimension
//! `i` pairs with `i + rot_dims/2` (not with `i + 1` as in GPT-J).
//!
//! Frequencies come from the host (`inv_freq[i] = base^(-2i/rot_dims)`, computed in f64 and
//! rounded once) so the device does one f32 multiply per angle, like the reference frameworks;
//! the angle is range-reduced before the hardware sin/cos (see `math::sincos`).

use crate::device::math::sincos;
use crate::device::*;

kernel! {
    /// `x`: `[tokens][n_heads][head_dim]`, rotated in place; `positions[tokens]`;
    /// `inv_freq[rot_dims / 2]`. Dimensions from `rot_dims` to `head_dim` pass through.
    /// One thread per (token, head, pair); any 1-D grid covering `tokens·n_heads·rot_dims/2`.
    pub fn rope_neox(
        x: Out<f32>,
        positions: In<u32>,
        inv_freq: In<f32>,
        tokens: u32,
        n_heads: u32,
        head_dim: u32,
        rot_dims: u32
    ) {
        let half = (rot_dims / 2) as usize;
        let total = tokens as usize * n_heads as usize * half;
        let i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        if i >= total {
            return;
        }
        let pair = i % half;
        let head_row = i / half; // token * n_heads + head
        let token = head_row / n_heads as usize;
        let base = head_row * head_dim as usize;
        let angle = positions.at(token) as f32 * inv_freq.at(pair);
        let (sin, cos) = sincos(angle);
        let x0 = x.at(base + pair);
        let x1 = x.at(base + pair + half);
        x.set(base + pair, x0 * cos - x1 * sin);
        x.set(base + pair + half, x0 * sin + x1 * cos);
    }
}
