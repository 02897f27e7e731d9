//! Seeded, counter-based random fills: element `i` of a tensor is a pure function of
//! `(seed, i)`, so a synthetic model generated on the device has the same bits on every run,
//! on every GPU and on the emulator, whatever the grid. `kiln bench --layers 48` makes its
//! ~60 GB of weights this way in well under a second instead of writing them on the host.

use crate::device::float::f32_to_bf16;
use crate::device::*;

/// SplitMix64's finaliser: a bijection on u64 whose output bits each depend on every input bit.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Element `i` of stream `seed`: uniform on [-1, 1) in steps of 2^-23 (24 high bits of the
/// mixed counter), exact in f32.
#[inline(always)]
pub fn uniform(seed: u64, i: u64) -> f32 {
    let bits = mix64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 40;
    bits as f32 * (1.0 / (1u32 << 23) as f32) - 1.0
}

/// Calls `store(i, offset + scale · uniform(seed, i))` for this thread's elements `i < n`
/// (grid-stride, so any 1-D grid covers `n`).
#[inline(always)]
fn for_each_value(
    n: u32,
    (lo, hi): (u32, u32),
    scale: f32,
    offset: f32,
    mut store: impl FnMut(usize, f32),
) {
    let seed = (hi as u64) << 32 | lo as u64;
    let stride = (grid_dim().x * block_dim().x) as usize;
    let mut i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
    while i < n as usize {
        store(i, offset + scale * uniform(seed, i as u64));
        i += stride;
    }
}

kernel! {
    /// `out[i] = bf16(offset + scale · uniform(seed, i))` for `i < n`; any 1-D grid.
    pub fn fill_uniform_bf16(
        out: Out<u16>,
        n: u32,
        seed_lo: u32,
        seed_hi: u32,
        scale: f32,
        offset: f32
    ) {
        for_each_value(n, (seed_lo, seed_hi), scale, offset, |i, v| out.set(i, f32_to_bf16(v)));
    }
}

kernel! {
    /// `out[i] = offset + scale · uniform(seed, i)` for `i < n`; any 1-D grid.
    pub fn fill_uniform_f32(
        out: Out<f32>,
        n: u32,
        seed_lo: u32,
        seed_hi: u32,
        scale: f32,
        offset: f32
    ) {
        for_each_value(n, (seed_lo, seed_hi), scale, offset, |i, v| out.set(i, v));
    }
}
