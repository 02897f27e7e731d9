//! RMSNorm over rows and over heads against the float64 reference (`kiln::reference::ops`), on
//! the emulator (default) or the GPU (`KILN_TEST_DEVICE=cuda|all`).
//!
//! Tolerance 2e-6: the kernels compute in f32 (a fixed-order sum of squares, `sqrt.rn`), within
//! a few f32 ulps of exact (~3e-7 observed); any indexing or formula error gives ≥ 1e-3.

mod common;
use common::*;
use kiln::gpu::ops::norm::{self, NormShape};
use kiln::reference::ops;

const ROWS: [usize; 4] = [1, 5, 33, 257];
const TOL: f64 = 2e-6;
const EPS: f32 = 1e-6;

/// Each `width`-long vector of `x` normalised with `w`.
fn reference(x: &[f32], w: &[f32], width: usize) -> Vec<f64> {
    x.chunks(width)
        .flat_map(|v| ops::rms_norm(&ops::widen(v), w, f64::from(EPS)))
        .collect()
}

/// A weight near 1 (as trained norms are), fresh per case.
fn weight(r: &mut kiln::rng::Rng, width: usize) -> Vec<f32> {
    r.normal_vec(width, 0.1).iter().map(|v| 1.0 + v).collect()
}

#[test]
fn rms_norm_rows_matches_f64_and_is_batch_invariant() {
    for dev in devices() {
        for (case, &rows) in ROWS.iter().enumerate() {
            for cols in [64, 256, 1000] {
                let mut r = rng(case as u64 * 10 + cols as u64);
                let x = r.normal_vec(rows * cols, 2.0);
                let w = weight(&mut r, cols);
                let (xb, wb) = (upload(&dev, &x), upload(&dev, &w));
                let y = poisoned(&dev, rows * cols, f32::NAN);
                let shape = NormShape {
                    rows,
                    width: cols,
                    eps: EPS,
                };
                norm::rms_norm_rows(&dev, &xb, &wb, &y, shape).unwrap();
                let got = y.to_vec().unwrap();
                let case = format!("rms_norm_rows {rows}x{cols}");
                assert_close(&case, &dev, &got, &reference(&x, &w, cols), TOL);
                // The last row alone must give the same bits as inside the batch.
                let last = upload(&dev, &x[(rows - 1) * cols..]);
                let y1 = poisoned(&dev, cols, f32::NAN);
                let one = NormShape { rows: 1, ..shape };
                norm::rms_norm_rows(&dev, &last, &wb, &y1, one).unwrap();
                assert_eq!(bits(&y1.to_vec().unwrap()), bits(&got[(rows - 1) * cols..]));
            }
        }
    }
}

#[test]
fn rms_norm_heads_matches_f64() {
    for dev in devices() {
        for (case, &rows) in ROWS.iter().enumerate() {
            for head_dim in [64, 128] {
                let heads = 4;
                let mut r = rng(100 + case as u64 * 10 + head_dim as u64);
                let x = r.normal_vec(rows * heads * head_dim, 1.5);
                let w = weight(&mut r, head_dim);
                let (xb, wb) = (upload(&dev, &x), upload(&dev, &w));
                let y = poisoned(&dev, x.len(), f32::NAN);
                let shape = NormShape {
                    rows: rows * heads,
                    width: head_dim,
                    eps: EPS,
                };
                norm::rms_norm_heads(&dev, &xb, &wb, &y, shape).unwrap();
                assert_close(
                    &format!("rms_norm_heads {rows}x{heads}x{head_dim}"),
                    &dev,
                    &y.to_vec().unwrap(),
                    &reference(&x, &w, head_dim),
                    TOL,
                );
                // In place (y = x) gives the same result.
                norm::rms_norm_heads(&dev, &xb, &wb, &xb, shape).unwrap();
                assert_eq!(bits(&xb.to_vec().unwrap()), bits(&y.to_vec().unwrap()));
            }
        }
    }
}

#[test]
fn norm_shapes_are_checked_before_launching() {
    let dev = kiln::gpu::Device::emulator();
    let x = upload(&dev, &rng(900).normal_vec(10, 1.0));
    let w = upload(&dev, &[1.0f32; 5]);
    let y = poisoned(&dev, 10, f32::NAN);
    let shape = |rows, width| NormShape {
        rows,
        width,
        eps: EPS,
    };
    let err = norm::rms_norm_rows(&dev, &x, &w, &y, shape(3, 5)).unwrap_err();
    assert!(
        err.to_string().contains("x has 10 elements, needs 15"),
        "{err}"
    );
    let err = norm::rms_norm_heads(&dev, &x, &w, &y, shape(2, 0)).unwrap_err();
    assert!(err.to_string().contains("width must be positive"), "{err}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
