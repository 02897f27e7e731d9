//! GEMM kernels against float64 references (`kiln::reference::ops::matmul`), and batch
//! invariance: a row computed alone has the same bits as inside any batch.
//!
//! The bf16-weight GEMMs run on tensor cores and round their activations to bf16 (nearest even)
//! as they stage them, as llama.cpp does for BF16 weights; the references apply the same
//! rounding to x and then compute exactly in f64, so what is left is f32 accumulation error.
//! Tolerance 5e-6: over k ≤ 300 that error is ~√k·2^-24 ≈ 1e-6 typical; an indexing error, or
//! a kernel that skipped the rounding the policy asks for (≈1e-3), fails it.
//!
//! Shapes: k not a multiple of 4 (1, 3, 17, 33, 130) and odd m run the partial-load and
//! zero-padding paths of the tile loaders; 67 rows cross a 64-row tile.

mod common;
use common::*;
use kiln::gpu::Device;
use kiln::gpu::ops::gemm::{self, Epilogue, GemmShape};
use kiln::reference::ops::{matmul, swiglu, widen};

const ROWS: [usize; 4] = [1, 5, 33, 257];
const TOL: f64 = 5e-6;

fn bf16_weights(r: &mut kiln::rng::Rng, n: usize, std: f64) -> (Vec<u16>, Vec<f64>) {
    bf16_bits_and_values(&r.normal_vec(n, std))
}

/// `x · wᵀ` in f64 with `x` rounded to bf16 first, as the tensor-core kernels stage it.
fn bf16_matmul(x: &[f32], w: &[f64], s: GemmShape) -> Vec<f64> {
    matmul(&widen(&bf16_rounded(x)), w, s.rows, s.m, s.k)
}

/// The last row of `x` alone through `run` gives the same bits as row `rows - 1` of `batch`.
fn assert_last_row_invariant(
    dev: &Device,
    x: &[f32],
    batch: &[f32],
    s: GemmShape,
    run: impl Fn(&kiln::gpu::Buffer<f32>, &kiln::gpu::Buffer<f32>, GemmShape),
) {
    let x1 = upload(dev, &x[(s.rows - 1) * s.k..]);
    let y1 = poisoned(dev, s.m, f32::NAN);
    run(&x1, &y1, GemmShape { rows: 1, ..s });
    assert_eq!(
        bits(&y1.to_vec().unwrap()),
        bits(&batch[(s.rows - 1) * s.m..]),
        "row invariance {s:?} on {}",
        dev.name()
    );
}

#[test]
fn gemm_bf16_with_bias_and_residual_matches_f64_and_is_batch_invariant() {
    for dev in devices() {
        for (case, &rows) in ROWS.iter().enumerate() {
            for (m, k) in [(100, 72), (64, 256), (130, 300)] {
                let s = GemmShape { rows, m, k };
                let mut r = rng(case as u64 * 1000 + m as u64 * 7 + k as u64);
                let x = r.normal_vec(rows * k, 1.0);
                let (wb, w) = bf16_weights(&mut r, m * k, 1.0 / (k as f64).sqrt());
                let bias = r.normal_vec(m, 0.1);
                let resid = r.normal_vec(rows * m, 1.0);
                let (xd, wd, bd) = (upload(&dev, &x), upload(&dev, &wb), upload(&dev, &bias));
                let y = upload(&dev, &resid);
                let both = Epilogue {
                    bias: Some(&bd),
                    add_to_y: true,
                };
                gemm::matmul_bf16(&dev, &xd, &wd, &y, s, both).unwrap();
                let plain = bf16_matmul(&x, &w, s);
                let want: Vec<f64> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + f64::from(bias[i % m]) + f64::from(resid[i]))
                    .collect();
                let got = y.to_vec().unwrap();
                assert_close(&format!("gemm_bf16 {s:?}"), &dev, &got, &want, TOL);

                // Plain product, then the last row alone: same bits as in the batch.
                let yb = poisoned(&dev, rows * m, f32::NAN);
                gemm::matmul_bf16(&dev, &xd, &wd, &yb, s, Epilogue::STORE).unwrap();
                let batch = yb.to_vec().unwrap();
                assert_close(&format!("gemm_bf16 plain {s:?}"), &dev, &batch, &plain, TOL);
                assert_last_row_invariant(&dev, &x, &batch, s, |x, y, s| {
                    gemm::matmul_bf16(&dev, x, &wd, y, s, Epilogue::STORE).unwrap()
                });
            }
        }
    }
}

#[test]
fn gemm_f32_matches_f64() {
    for dev in devices() {
        for (case, &rows) in ROWS.iter().enumerate() {
            let s = GemmShape { rows, m: 7, k: 256 }; // router-like: few outputs
            let mut r = rng(2000 + case as u64);
            let x = r.normal_vec(rows * s.k, 1.0);
            let w = r.normal_vec(s.m * s.k, 0.06);
            let y = poisoned(&dev, rows * s.m, f32::NAN);
            gemm::matmul_f32(&dev, &upload(&dev, &x), &upload(&dev, &w), &y, s).unwrap();
            let want = matmul(&widen(&x), &widen(&w), rows, s.m, s.k);
            assert_close(
                &format!("gemm_f32 {s:?}"),
                &dev,
                &y.to_vec().unwrap(),
                &want,
                TOL,
            );
        }
    }
}

/// `silu(x · gᵀ) ⊙ (x · uᵀ)` in f64 (bf16-rounded x).
fn gated_reference(x: &[f32], g: &[f64], u: &[f64], s: GemmShape) -> Vec<f64> {
    let (gr, ur) = (bf16_matmul(x, g, s), bf16_matmul(x, u, s));
    gr.iter().zip(&ur).map(|(g, u)| swiglu(*g, *u)).collect()
}

#[test]
fn gated_gemm_fuses_swiglu_and_is_batch_invariant() {
    for dev in devices() {
        for (case, &rows) in ROWS.iter().enumerate() {
            let s = GemmShape {
                rows,
                m: 96,
                k: 128,
            };
            let mut r = rng(3000 + case as u64);
            let x = r.normal_vec(rows * s.k, 1.0);
            let (gb, g) = bf16_weights(&mut r, s.m * s.k, 0.2);
            let (ub, u) = bf16_weights(&mut r, s.m * s.k, 0.2);
            let (xd, gd, ud) = (upload(&dev, &x), upload(&dev, &gb), upload(&dev, &ub));
            let y = poisoned(&dev, rows * s.m, f32::NAN);
            gemm::matmul_gated_bf16(&dev, &xd, &gd, &ud, &y, s).unwrap();
            let got = y.to_vec().unwrap();
            let want = gated_reference(&x, &g, &u, s);
            assert_close(&format!("gated {s:?}"), &dev, &got, &want, TOL);
            assert_last_row_invariant(&dev, &x, &got, s, |x, y, s| {
                gemm::matmul_gated_bf16(&dev, x, &gd, &ud, y, s).unwrap()
            });
        }
    }
}

/// Every GEMM kernel at k not a multiple of 4 and odd m: the element-wise partial loads and
/// the zero padding past k (a padding that read garbage, or a partial load that dropped an
/// element, moves results by ≥ 1e-2).
#[test]
fn every_gemm_handles_ragged_k_and_odd_m() {
    for dev in devices() {
        for (case, &rows) in [1usize, 5, 67].iter().enumerate() {
            for (m, k) in [(1, 1), (3, 3), (65, 17), (33, 33), (7, 130)] {
                let s = GemmShape { rows, m, k };
                let mut r = rng(5000 + case as u64 * 100 + k as u64);
                let x = r.normal_vec(rows * k, 1.0);
                let xd = upload(&dev, &x);
                let std = 1.0 / (k as f64).sqrt();

                let (wb, w) = bf16_weights(&mut r, m * k, std);
                let bias = r.normal_vec(m, 0.1);
                let (wd, bd) = (upload(&dev, &wb), upload(&dev, &bias));
                let y = poisoned(&dev, rows * m, f32::NAN);
                gemm::matmul_bf16(&dev, &xd, &wd, &y, s, Epilogue::bias(Some(&bd))).unwrap();
                let want: Vec<f64> = bf16_matmul(&x, &w, s)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + f64::from(bias[i % m]))
                    .collect();
                let got = y.to_vec().unwrap();
                assert_close(&format!("gemm_bf16 {s:?}"), &dev, &got, &want, TOL);
                assert_last_row_invariant(&dev, &x, &got, s, |x, y, s| {
                    let e = Epilogue::bias(Some(&bd));
                    gemm::matmul_bf16(&dev, x, &wd, y, s, e).unwrap()
                });

                let wf = r.normal_vec(m * k, std);
                let y = poisoned(&dev, rows * m, f32::NAN);
                gemm::matmul_f32(&dev, &xd, &upload(&dev, &wf), &y, s).unwrap();
                let want = matmul(&widen(&x), &widen(&wf), rows, m, k);
                assert_close(
                    &format!("gemm_f32 {s:?}"),
                    &dev,
                    &y.to_vec().unwrap(),
                    &want,
                    TOL,
                );

                let (gb, g) = bf16_weights(&mut r, m * k, std);
                let (ub, u) = bf16_weights(&mut r, m * k, std);
                let y = poisoned(&dev, rows * m, f32::NAN);
                let (gd, ud) = (upload(&dev, &gb), upload(&dev, &ub));
                gemm::matmul_gated_bf16(&dev, &xd, &gd, &ud, &y, s).unwrap();
                let want = gated_reference(&x, &g, &u, s);
                assert_close(
                    &format!("gated {s:?}"),
                    &dev,
                    &y.to_vec().unwrap(),
                    &want,
                    TOL,
                );
            }
        }
    }
}

#[test]
fn gemm_rejects_bad_shapes_before_launching() {
    let dev = Device::emulator();
    let x = upload(&dev, &rng(6000).normal_vec(10, 1.0));
    let w = upload(&dev, &[0x3f80u16; 10]);
    let y = poisoned(&dev, 3, 0.0f32);
    let s = GemmShape {
        rows: 2,
        m: 2,
        k: 5,
    };
    let err = gemm::matmul_bf16(&dev, &x, &w, &y, s, Epilogue::STORE).unwrap_err();
    assert!(
        err.to_string().contains("y has 3 elements, needs 4"),
        "{err}"
    );
    let s = GemmShape {
        rows: 1,
        m: 0,
        k: 5,
    };
    let err = gemm::matmul_bf16(&dev, &x, &w, &y, s, Epilogue::STORE).unwrap_err();
    assert!(err.to_string().contains("must be positive"), "{err}");
    let b = upload(&dev, &[0.5f32; 1]);
    let s = GemmShape {
        rows: 1,
        m: 2,
        k: 5,
    };
    let err = gemm::matmul_bf16(&dev, &x, &w, &y, s, Epilogue::bias(Some(&b))).unwrap_err();
    assert!(err.to_string().contains("bias has 1 elements"), "{err}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
