//! Element conversions between f32 activations and bf16 storage.

use crate::device::float::{bf16_to_f32, f32_to_bf16, split_bf16x3};
use crate::device::*;

#[inline(always)]
fn global_index() -> (usize, usize) {
    let i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
    (i, (grid_dim().x * block_dim().x) as usize)
}

kernel! {
    /// `y[i] = bf16(x[i])`, round to nearest even; any 1-D grid.
    pub fn f32_to_bf16_kernel(x: In<f32>, y: Out<u16>, n: u32) {
        let (mut i, stride) = global_index();
        while i < n as usize {
            y.set(i, f32_to_bf16(x.at(i)));
            i += stride;
        }
    }
}

kernel! {
    /// `y[i] = f32(x[i])` (exact); any 1-D grid.
    pub fn bf16_to_f32_kernel(x: In<u16>, y: Out<f32>, n: u32) {
        let (mut i, stride) = global_index();
        while i < n as usize {
            y.set(i, bf16_to_f32(x.at(i)));
            i += stride;
        }
    }
}

kernel! {
    /// `y[p·n + i]` = part `p` of `split_bf16x3(x[i])` (`p` = 0: lo, 1: mid, 2: hi), so a
    /// `[rows][cols]` f32 matrix becomes three stacked bf16 matrices, `[3·rows][cols]`, whose
    /// sum is exactly `x`; any 1-D grid.
    pub fn f32_to_bf16x3_kernel(x: In<f32>, y: Out<u16>, n: u32) {
        let (mut i, stride) = global_index();
        let n = n as usize;
        while i < n {
            for (p, part) in split_bf16x3(x.at(i)).into_iter().enumerate() {
                y.set(p * n + i, part);
            }
            i += stride;
        }
    }
}
