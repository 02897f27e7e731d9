//! The Hopper GEMM (`gpu_kernels::gemm_wgmma`, built on the emulator's TMA, `mbarrier` and
//! `wgmma` model) on the emulator: `gemm_wgmma_f32` with bias and residual and
//! `gemm_wgmma_swiglu` against float64 references, and batch invariance (a row computed alone,
//! at any tile position, is bit-identical to the same row in a larger call). K runs long enough
//! to refill every slot of the pipeline's ring, so a correct pipeline is shown not to be
//! reported as a race.
//!
//! Everything launches at the emulator level (`emu::launch`), with tensor maps encoded by
//! `TensorMap::emulated_2d` over host vectors (`emu_common::hopper`).
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod common;
mod emu_common;

use common::{bf16_to_f32 as bf16_f32, rel_l2, rng};
use emu_common::hopper::{Bf16Tensor, cfg, random_bf16};
use gpu_kernels::device::emu;
use gpu_kernels::device::{In, Out};
use gpu_kernels::gemm_wgmma;

/// Blocks of a persistent launch over `rows` × `b_rows` (narrow tiles): two, fewer than the
/// tiles of most calls here, so blocks walk several tiles and carry the ring across them.
fn persistent_blocks(rows: usize, b_rows: usize) -> u32 {
    let tiles = rows.div_ceil(gemm_wgmma::BM) * b_rows.div_ceil(gemm_wgmma::BN);
    tiles.min(2) as u32
}

/// A GEMM problem: x `[rows][k]`, w `[m][k]` (bf16), bias `[m]`, residual y `[rows][m]`.
struct Gemm {
    rows: usize,
    m: usize,
    k: usize,
    x: Bf16Tensor,
    w: Bf16Tensor,
    x_vals: Vec<f64>,
    w_vals: Vec<f64>,
    bias: Vec<f32>,
    y0: Vec<f32>,
}

impl Gemm {
    fn new(salt: u64, rows: usize, m: usize, k: usize) -> Self {
        let mut r = rng(salt);
        let (x, x_vals) = random_bf16(&mut r, rows * k, 1.0);
        let (w, w_vals) = random_bf16(&mut r, m * k, 1.0 / (k as f64).sqrt());
        Gemm {
            rows,
            m,
            k,
            x: Bf16Tensor::new(&x),
            w: Bf16Tensor::new(&w),
            x_vals,
            w_vals,
            bias: r.normal_vec(m, 1.0),
            y0: r.normal_vec(rows * m, 1.0),
        }
    }

    /// `x · wᵀ` for rows `0..rows` (f64).
    fn product(&self) -> Vec<f64> {
        let (m, k) = (self.m, self.k);
        let mut y = vec![0.0; self.rows * m];
        for r in 0..self.rows {
            for c in 0..m {
                y[r * m + c] = (0..k)
                    .map(|i| self.x_vals[r * k + i] * self.w_vals[c * k + i])
                    .sum();
            }
        }
        y
    }

    /// Runs `gemm_wgmma_f32` over rows `from..from + rows` of x with `flags`; y starts as the
    /// matching rows of `y0`.
    fn run_f32(&self, from: usize, rows: usize, flags: u32) -> Vec<f32> {
        let (m, k) = (self.m, self.k);
        let maps = [
            self.x
                .map(from * k, k as u64, rows as u64, 64, gemm_wgmma::BM as u32),
            self.w.map(0, k as u64, m as u64, 64, gemm_wgmma::BN as u32),
        ];
        let mut y = self.y0[from * m..(from + rows) * m].to_vec();
        let (mx, mw, b, yo) = (
            In::from_slice(&maps[..1]),
            In::from_slice(&maps[1..]),
            In::from_slice(&self.bias),
            Out::from_slice(&mut y),
        );
        let grid = (persistent_blocks(rows, m), 1);
        emu::launch(
            cfg(grid, gemm_wgmma::THREADS, gemm_wgmma::SHARED_BYTES),
            || gemm_wgmma::gemm_wgmma_f32(mx, mw, b, yo, rows as u32, m as u32, k as u32, flags),
        )
        .unwrap();
        y
    }
}

#[test]
fn gemm_wgmma_f32_matches_float64_with_bias_and_residual() {
    let both = gemm_wgmma::EPI_BIAS | gemm_wgmma::EPI_ADD_TO_Y;
    for (i, (rows, m, k, flags)) in [
        (1, 128, 64, both),
        (7, 200, 72, both),
        (129, 128, 136, both),
        (129, 200, 64, 0),
        // 12 K slices through the 5-slot ring: every slot refilled twice.
        (9, 128, 712, both),
    ]
    .into_iter()
    .enumerate()
    {
        let g = Gemm::new(40 + i as u64, rows, m, k);
        let got = g.run_f32(0, rows, flags);
        let mut want = g.product();
        for r in 0..rows {
            for c in 0..m {
                if flags & gemm_wgmma::EPI_BIAS != 0 {
                    want[r * m + c] += g.bias[c] as f64;
                }
                if flags & gemm_wgmma::EPI_ADD_TO_Y != 0 {
                    want[r * m + c] += g.y0[r * m + c] as f64;
                }
            }
        }
        let err = rel_l2(&got, &want);
        assert!(
            err < 1e-6,
            "gemm_wgmma_f32 {rows}×{m}×{k} flags {flags}: rel L2 {err:.3e}"
        );
    }
}

#[test]
fn gemm_wgmma_f32_rows_are_bit_identical_at_any_tile_position() {
    let (rows, m, k) = (130, 200, 136);
    let flags = gemm_wgmma::EPI_BIAS | gemm_wgmma::EPI_ADD_TO_Y;
    let g = Gemm::new(50, rows, m, k);
    let all = g.run_f32(0, rows, flags);
    // (first row, rows): single rows at other tile positions, and a short run across one.
    for (from, n) in [
        (0, 1),
        (3, 1),
        (77, 1),
        (127, 1),
        (128, 1),
        (129, 1),
        (60, 7),
    ] {
        let part = g.run_f32(from, n, flags);
        let want = &all[from * m..(from + n) * m];
        assert_eq!(
            common::bits(&part),
            common::bits(want),
            "rows {from}..{} alone differ from the same rows of the {rows}-row call",
            from + n
        );
    }
}

#[test]
fn gemm_wgmma_swiglu_matches_float64() {
    // SwiGLU: gate|up interleaved in blocks of 64 rows of w (rows 128i.. gate features 64i..,
    // the next 64 up), features past m zero (the last block padded).
    for (i, (rows, m, k)) in [(5, 128, 64), (129, 200, 72)].into_iter().enumerate() {
        let mut r = rng(70 + i as u64);
        let (x, x_vals) = random_bf16(&mut r, rows * k, 1.0);
        let (gate, gate_vals) = random_bf16(&mut r, m * k, 1.0 / (k as f64).sqrt());
        let (up, up_vals) = random_bf16(&mut r, m * k, 1.0 / (k as f64).sqrt());
        let blocks = m.div_ceil(64);
        let mut w = vec![0u16; blocks * 128 * k];
        for f in 0..m {
            let (blk, o) = (f / 64, f % 64);
            w[(blk * 128 + o) * k..][..k].copy_from_slice(&gate[f * k..][..k]);
            w[(blk * 128 + 64 + o) * k..][..k].copy_from_slice(&up[f * k..][..k]);
        }
        let (x, w) = (Bf16Tensor::new(&x), Bf16Tensor::new(&w));
        let maps = [
            x.map(0, k as u64, rows as u64, 64, 128),
            w.map(0, k as u64, (blocks * 128) as u64, 64, 128),
        ];
        let mut h = vec![0xffffu16; rows * m];
        let (mx, mw, ho) = (
            In::from_slice(&maps[..1]),
            In::from_slice(&maps[1..]),
            Out::from_slice(&mut h),
        );
        let grid = (persistent_blocks(rows, 128 * blocks), 1);
        emu::launch(
            cfg(grid, gemm_wgmma::THREADS, gemm_wgmma::SHARED_BYTES),
            || gemm_wgmma::gemm_wgmma_swiglu(mx, mw, ho, rows as u32, m as u32, k as u32),
        )
        .unwrap();
        let mut want = vec![0.0; rows * m];
        for r in 0..rows {
            for f in 0..m {
                let dot = |w: &[f64]| {
                    (0..k)
                        .map(|i| x_vals[r * k + i] * w[f * k + i])
                        .sum::<f64>()
                };
                let (g, u) = (dot(&gate_vals), dot(&up_vals));
                want[r * m + f] = kiln::reference::ops::silu(g) * u;
            }
        }
        let err = rel_l2(&bf16_f32(&h), &want);
        assert!(
            err < 5e-3,
            "gemm_wgmma_swiglu {rows}×{m}×{k}: rel L2 {err:.3e}"
        );
    }
}
