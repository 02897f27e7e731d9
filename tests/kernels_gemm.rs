//! The f32 GEMM (`gemm::matmul_f32`: the MoE router and the shared-expert gate, CUDA cores,
//! full f32) against the float64 reference (`kiln::reference::ops::matmul`), and batch
//! invariance: a row computed alone has the same bits as inside any batch. The bf16 tensor-core
//! GEMMs are tested in `kernels_gemm_wgmma.rs`.
//!
//! Tolerance 5e-6: f32 inputs and weights are exact in f64, so what is left is f32
//! accumulation error, ~√k·2^-24 ≈ 1e-6 typical over k ≤ 300; an indexing error gives ≥ 1e-2.
//! K is summed in `K_SPLITS` fixed ranges: k = 72 and 130 leave the last range empty (zeros),
//! k = 1 and 3 leave three empty.
//!
//! Shapes: k not a multiple of 4 (1, 3, 17, 33, 130) and odd m run the partial-load and
//! zero-padding paths of the tile loaders; 67 and 257 rows cross 64-row tiles.

mod common;
use common::*;
use kiln::gpu::Device;
use kiln::gpu::ops::gemm::{self, GemmShape};
use kiln::reference::ops::{matmul, widen};

const TOL: f64 = 5e-6;

/// Runs `matmul_f32` on a poisoned output and checks it against f64 and, for the last row
/// alone, bit for bit against the batch.
fn check(dev: &Device, s: GemmShape, salt: u64) {
    let mut r = rng(salt);
    let x = r.normal_vec(s.rows * s.k, 1.0);
    let w = r.normal_vec(s.m * s.k, 1.0 / (s.k as f64).sqrt());
    let wd = upload(dev, &w);
    let y = poisoned(dev, s.rows * s.m, f32::NAN);
    let partials = poisoned(dev, gemm::partials_len(s), f32::NAN);
    gemm::matmul_f32(dev, &upload(dev, &x), &wd, &y, &partials, s).unwrap();
    let got = y.to_vec().unwrap();
    let want = matmul(&widen(&x), &widen(&w), s.rows, s.m, s.k);
    assert_close(&format!("gemm_f32 {s:?}"), dev, &got, &want, TOL);

    let x1 = upload(dev, &x[(s.rows - 1) * s.k..]);
    let y1 = poisoned(dev, s.m, f32::NAN);
    gemm::matmul_f32(dev, &x1, &wd, &y1, &partials, GemmShape { rows: 1, ..s }).unwrap();
    assert_eq!(
        bits(&y1.to_vec().unwrap()),
        bits(&got[(s.rows - 1) * s.m..]),
        "row invariance {s:?} on {}",
        dev.name()
    );
}

#[test]
fn gemm_f32_matches_f64_and_is_batch_invariant() {
    for dev in devices() {
        for (case, rows) in [1, 5, 33, 257].into_iter().enumerate() {
            // Router-like (few outputs) and a wider one crossing a 64-column tile.
            check(&dev, GemmShape { rows, m: 7, k: 256 }, 2000 + case as u64);
            check(
                &dev,
                GemmShape {
                    rows,
                    m: 100,
                    k: 72,
                },
                2100 + case as u64,
            );
        }
    }
}

/// k not a multiple of 4 and odd m: the element-wise partial loads and the zero padding past k
/// (a padding that read garbage, or a partial load that dropped an element, moves results by
/// ≥ 1e-2).
#[test]
fn gemm_f32_handles_ragged_k_and_odd_m() {
    for dev in devices() {
        for (case, rows) in [1, 5, 67].into_iter().enumerate() {
            for (m, k) in [(1, 1), (3, 3), (65, 17), (33, 33), (7, 130)] {
                let salt = 5000 + case as u64 * 100 + k as u64;
                check(&dev, GemmShape { rows, m, k }, salt);
            }
        }
    }
}

#[test]
fn gemm_f32_rejects_bad_shapes_before_launching() {
    let dev = Device::emulator();
    let x = upload(&dev, &rng(6000).normal_vec(10, 1.0));
    let w = upload(&dev, &[0.5f32; 10]);
    let y = poisoned(&dev, 3, 0.0f32);
    let partials = poisoned(&dev, 11, 0.0f32);
    let err = |rows, m, k| {
        gemm::matmul_f32(&dev, &x, &w, &y, &partials, GemmShape { rows, m, k })
            .unwrap_err()
            .to_string()
    };
    let e = err(2, 2, 5);
    assert!(e.contains("y has 3 elements, needs 4"), "{e}");
    let e = err(1, 0, 5);
    assert!(e.contains("must be positive"), "{e}");
    let e = err(1, 3, 5);
    assert!(e.contains("w has 10 elements, needs 15"), "{e}");
    let e = err(3, 1, 5);
    assert!(e.contains("x has 10 elements, needs 15"), "{e}");
    let e = err(1, 3, 3);
    assert!(e.contains("partials has 11 elements, needs 12"), "{e}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
