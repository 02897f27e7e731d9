//! The K-segmented GEMM (the MoE router's): split-K whose split depends on K alone, each
//! segment's products written to a plane of their own for the caller to add in a fixed order.

use super::epilogue::SegmentStore;
use super::pairs::{Share, dense_tile};
use super::{BK, Split, persistent};
use crate::device::async_copy::TensorMap;
use crate::device::*;

/// The K-segmented GEMM in narrow (`BN`) or half-width (`HALF_BN`) tiles: every element gets
/// the same `wgmma` k16 steps in the same order either way (`m64n128k16` or `m64n64k16`; a GPU
/// test checks the bits), so the host picks the width per call.
#[inline(always)]
fn segments<const HALF: bool>(
    (map_x, map_w): (In<TensorMap>, In<TensorMap>),
    y: Out<f32>,
    (n_rows, m, k): (u32, u32, u32),
    seg_k: u32,
) {
    let split = if HALF { Split::HalfWidth } else { Split::Rows };
    let (k_slices, segment) = (k.div_ceil(BK as u32), (seg_k / BK as u32).max(1));
    let tiles = |t| dense_tile(t, (n_rows, m, split.cols()), (k_slices, segment));
    let plane = n_rows * m;
    persistent(
        (split, Share::None),
        (map_x, map_w),
        tiles,
        SegmentStore {
            split,
            y,
            m,
            segment,
            plane,
        },
    );
}

kernel! {
    threads = crate::gemm_wgmma::THREADS;
    /// Split-K whose split depends on K alone: plane `s` of `y` (`[⌈k / seg_k⌉][n_rows][m]`,
    /// f32) is `x · wᵀ` over K columns `s·seg_k..(s+1)·seg_k` only, for the caller to add in a
    /// fixed order (the MoE router: more blocks for few rows). `seg_k` a multiple of `BK`.
    /// Narrow tiles (`map_w` in boxes of `BN` rows, `SHARED_BYTES`); persistent, as
    /// `gemm_wgmma_f32`.
    pub fn gemm_wgmma_f32_segments(map_x: In<TensorMap>, map_w: In<TensorMap>, y: Out<f32>, n_rows: u32, m: u32, k: u32, seg_k: u32) {
        segments::<false>((map_x, map_w), y, (n_rows, m, k), seg_k);
    }
}

kernel! {
    threads = crate::gemm_wgmma::THREADS;
    /// As `gemm_wgmma_f32_segments` in half-width tiles (`map_w` in boxes of `HALF_BN` rows):
    /// twice the blocks for a call of few tiles. Every element gets the same bits as there.
    pub fn gemm_wgmma_f32_segments_half(map_x: In<TensorMap>, map_w: In<TensorMap>, y: Out<f32>, n_rows: u32, m: u32, k: u32, seg_k: u32) {
        segments::<true>((map_x, map_w), y, (n_rows, m, k), seg_k);
    }
}
