//! SwiGLU: `silu(gate) * up`, the activation of every Qwen FFN and expert.

use crate::device::math::silu;
use crate::device::*;

kernel! {
    /// `y[i] = silu(gate[i]) * up[i]` for `i < n`; any 1-D grid (grid-stride loop).
    pub fn swiglu(gate: In<f32>, up: In<f32>, y: Out<f32>, n: u32) {
        let stride = (grid_dim().x * block_dim().x) as usize;
        let mut i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        while i < n as usize {
            y.set(i, silu(gate.at(i)) * up.at(i));
            i += stride;
        }
    }
}
