//! GEMM kernels against float64 references, and batch invariance: a row computed alone has the
//! same bits as inside any batch.
//!
//! The bf16-weight GEMMs run on tensor cores and round their activations to bf16 (nearest even)
//! as they stage them, as llama.cpp does for BF16 weights; the references apply the same
//! rounding to x and then compute exactly in f64, so what is left is f32 accumulation error.
//! Tolerance 5e-6: over k ≤ 300 that error is ~√k·2^-24 ≈ 1e-6 typical; an indexing error, or
//! a kernel that skipped the rounding the policy asks for (≈1e-3), fails it.

mod common;
use common::*;
use kiln::gpu::ops::gemm;

const ROWS: [usize; 4] = [1, 5, 33, 257];
const TOL: f64 = 5e-6;

fn bf16_weights(r: &mut kiln::rng::Rng, n: usize, std: f64) -> (Vec<u16>, Vec<f64>) {
    bf16_bits_and_values(&r.normal_vec(n, std))
}

fn matmul_ref(x: &[f32], w: &[f64], n: usize, m: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * m];
    for r in 0..n {
        for c in 0..m {
            y[r * m + c] = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i]).sum();
        }
    }
    y
}

#[test]
fn gemm_bf16_with_bias_and_residual_matches_f64_and_is_batch_invariant() {
    for dev in devices() {
        for (case, &n) in ROWS.iter().enumerate() {
            for (m, k) in [(100, 72), (64, 256), (130, 300)] {
                let mut r = rng(case as u64 * 1000 + m as u64 * 7 + k as u64);
                let x = r.normal_vec(n * k, 1.0);
                let (wb, w) = bf16_weights(&mut r, m * k, 1.0 / (k as f64).sqrt());
                let bias = r.normal_vec(m, 0.1);
                let resid = r.normal_vec(n * m, 1.0);
                let (xd, wd, bd) = (upload(&dev, &x), upload(&dev, &wb), upload(&dev, &bias));
                let y = upload(&dev, &resid);
                gemm::matmul_bf16(&dev, &xd, &wd, Some(&bd), &y, n, m, k, true).unwrap();
                let xr = bf16_rounded(&x);
                let mut want = matmul_ref(&xr, &w, n, m, k);
                for (i, v) in want.iter_mut().enumerate() {
                    *v += bias[i % m] as f64 + resid[i] as f64;
                }
                let got = y.to_vec().unwrap();
                assert_close(&format!("gemm_bf16 {n}x{m}x{k}"), &dev, &got, &want, TOL);

                // Plain product, then the last row alone: same bits as in the batch.
                let yb = poisoned(&dev, n * m, f32::NAN);
                gemm::matmul_bf16(&dev, &xd, &wd, None, &yb, n, m, k, false).unwrap();
                let batch = yb.to_vec().unwrap();
                let plain = matmul_ref(&xr, &w, n, m, k);
                assert_close(
                    &format!("gemm_bf16 plain {n}x{m}x{k}"),
                    &dev,
                    &batch,
                    &plain,
                    TOL,
                );
                let x1 = upload(&dev, &x[(n - 1) * k..]);
                let y1 = poisoned(&dev, m, f32::NAN);
                gemm::matmul_bf16(&dev, &x1, &wd, None, &y1, 1, m, k, false).unwrap();
                assert_eq!(
                    bits(&y1.to_vec().unwrap()),
                    bits(&batch[(n - 1) * m..]),
                    "gemm row invariance"
                );
            }
        }
    }
}

#[test]
fn gemm_f32_matches_f64() {
    for dev in devices() {
        for (case, &n) in ROWS.iter().enumerate() {
            let (m, k) = (7, 256); // router-like: few outputs
            let mut r = rng(2000 + case as u64);
            let x = r.normal_vec(n * k, 1.0);
            let w = r.normal_vec(m * k, 0.06);
            let y = poisoned(&dev, n * m, f32::NAN);
            gemm::matmul_f32(&dev, &upload(&dev, &x), &upload(&dev, &w), &y, n, m, k).unwrap();
            let w64: Vec<f64> = w.iter().map(|v| *v as f64).collect();
            assert_close(
                &format!("gemm_f32 {n}"),
                &dev,
                &y.to_vec().unwrap(),
                &matmul_ref(&x, &w64, n, m, k),
                TOL,
            );
        }
    }
}

#[test]
fn gated_gemm_fuses_swiglu_and_is_batch_invariant() {
    for dev in devices() {
        for (case, &n) in ROWS.iter().enumerate() {
            let (m, k) = (96, 128);
            let mut r = rng(3000 + case as u64);
            let x = r.normal_vec(n * k, 1.0);
            let (gb, g) = bf16_weights(&mut r, m * k, 0.2);
            let (ub, u) = bf16_weights(&mut r, m * k, 0.2);
            let (xd, gd, ud) = (upload(&dev, &x), upload(&dev, &gb), upload(&dev, &ub));
            let y = poisoned(&dev, n * m, f32::NAN);
            gemm::matmul_gated_bf16(&dev, &xd, &gd, &ud, &y, n, m, k).unwrap();
            let xr = bf16_rounded(&x);
            let (gr, ur) = (matmul_ref(&xr, &g, n, m, k), matmul_ref(&xr, &u, n, m, k));
            let want: Vec<f64> = gr
                .iter()
                .zip(&ur)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let got = y.to_vec().unwrap();
            assert_close(&format!("gated {n}"), &dev, &got, &want, TOL);
            let y1 = poisoned(&dev, m, f32::NAN);
            gemm::matmul_gated_bf16(
                &dev,
                &upload(&dev, &x[(n - 1) * k..]),
                &gd,
                &ud,
                &y1,
                1,
                m,
                k,
            )
            .unwrap();
            assert_eq!(bits(&y1.to_vec().unwrap()), bits(&got[(n - 1) * m..]));
        }
    }
}

#[test]
fn gemm_rejects_short_buffers() {
    let dev = kiln::gpu::Device::emulator();
    let x = upload(&dev, &[1.0f32; 10]);
    let w = upload(&dev, &[0u16; 10]);
    let y = poisoned(&dev, 3, 0.0f32);
    let err = gemm::matmul_bf16(&dev, &x, &w, None, &y, 2, 2, 5, false).unwrap_err();
    assert!(
        err.to_string().contains("y has 3 elements, needs 4"),
        "{err}"
    );
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
