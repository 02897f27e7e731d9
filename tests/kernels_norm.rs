//! `rms_norm_rows` (bf16 `y16` for the tensor-core GEMMs, optional f32 `y32`; `_adding`: the
//! residual add first, written back) against the
//! float64 reference (`kiln::reference::ops::rms_norm`), on the emulator (default) or the GPU
//! (`KILN_TEST_DEVICE=cuda|all`). Qwen3's QK-norm over heads is fused into `attention_input`
//! and tested in `kernels_attention_input.rs`.
//!
//! Tolerances:
//! - `y32` vs f64: rel L2 2e-6. The kernel computes in f32 (a fixed-order sum of squares,
//!   `sqrt.rn`, two multiplies), within a few f32 ulps (2^-24 ≈ 6e-8) of exact (~3e-7
//!   observed); an indexing or formula error gives ≥ 1e-3.
//! - `y16`: its bits must be exactly the round-to-nearest-even bf16 of `y32` (the kernel rounds
//!   the same f32 value it stores), and, checked on its own, each element within one bf16
//!   rounding of the f64 value: `(2^-8 + 1e-6)·|y| + 1e-6·rms(y)` (`common::assert_bf16_close`;
//!   1e-6 covers the f32 arithmetic before the rounding, ~3e-7 relative). Measured on the
//!   emulator: rel L2 ≈ 1.6e-3, worst element up to 0.995 of its bound (a value just above a
//!   power of two, where half a bf16 unit is 2^-8 relative).
//!
//! Widths (the kernel reads groups of `VEC` = 4 features, `ROW_THREADS` = 128 threads per
//! row, `HELD` = 8 groups a thread kept in registers, so 4096 features): 8 (two threads busy),
//! 200 and 1000 (not multiples of 4 · 128: some threads hold a group fewer), 512 (one group
//! each), 4096 (every register group used), 4200 (the groups past 4096 re-read, some threads
//! only); rows 1, 5, 33. Outputs start poisoned (NaN, bf16 0xFFFF) with one row more than
//! written, which must stay poisoned.

mod common;
use common::*;
use kiln::gpu::Device;
use kiln::gpu::ops::norm::{self, NormShape};
use kiln::reference::ops;

const ROWS: [usize; 3] = [1, 5, 33];
const WIDTHS: [usize; 6] = [8, 200, 512, 1000, 4096, 4200];
const TOL_F32: f64 = 2e-6;
const SLACK_BF16: f64 = 1e-6;
const EPS: f32 = 1e-6;

/// Each `width`-long row of `x` normalised with `w`, in f64.
fn reference(x: &[f32], w: &[f32], width: usize) -> Vec<f64> {
    x.chunks(width)
        .flat_map(|v| ops::rms_norm(&ops::widen(v), w, f64::from(EPS)))
        .collect()
}

/// A weight near 1 (as trained norms are), fresh per case.
fn weight(r: &mut kiln::rng::Rng, width: usize) -> Vec<f32> {
    r.normal_vec(width, 0.1).iter().map(|v| 1.0 + v).collect()
}

/// One case's inputs.
struct Case {
    shape: NormShape,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case {
    fn new(rows: usize, width: usize, salt: u64) -> Case {
        let mut r = rng(salt);
        // Rows of different scales, so the normalisation itself matters.
        let mut x = r.normal_vec(rows * width, 1.0);
        for row in x.chunks_mut(width) {
            let s = (4.0 * r.uniform()).exp2() as f32 * 0.25;
            row.iter_mut().for_each(|v| *v *= s);
        }
        Case {
            shape: NormShape {
                rows,
                width,
                eps: EPS,
            },
            w: weight(&mut r, width),
            x,
        }
    }

    /// Runs the kernel; returns (y16 bits, y32 when asked) including the extra poisoned row.
    fn run(&self, dev: &Device, with_f32: bool) -> (Vec<u16>, Option<Vec<f32>>) {
        let NormShape { rows, width, .. } = self.shape;
        let (x, w) = (upload(dev, &self.x), upload(dev, &self.w));
        let y16 = poisoned_tma(dev, rows + 1, width);
        let y32 = poisoned(dev, (rows + 1) * width, f32::NAN);
        let out32 = with_f32.then_some(&y32);
        norm::rms_norm_rows(dev, &x, &w, &y16, out32, self.shape).unwrap();
        if !with_f32 {
            // The wrapper hands `x` to the kernel as the unused f32 output: it must not change.
            assert_same(&bits(&x.to_vec().unwrap()), &bits(&self.x), "x was written");
            assert!(
                y32.to_vec().unwrap().iter().all(|v| v.is_nan()),
                "y32 was written"
            );
        }
        let y16 = y16.data().to_vec().unwrap();
        assert!(
            y16[rows * width..].iter().all(|b| *b == BF16_POISON),
            "y16 written past row {rows}"
        );
        let y32 = with_f32.then(|| {
            let y32 = y32.to_vec().unwrap();
            assert!(
                y32[rows * width..].iter().all(|v| v.is_nan()),
                "y32 written past row {rows}"
            );
            y32[..rows * width].to_vec()
        });
        (y16[..rows * width].to_vec(), y32)
    }
}

#[test]
fn rms_norm_rows_f32_matches_f64_and_bf16_is_its_rounding() {
    use gpu_kernels::norm::{HELD, ROW_THREADS, VEC};
    // The widths above are chosen around these (see the module doc).
    assert_eq!((ROW_THREADS, VEC, HELD), (128, 4, 8));
    for dev in devices() {
        for (ci, &rows) in ROWS.iter().enumerate() {
            for &width in &WIDTHS {
                let c = Case::new(rows, width, 10 * ci as u64 + width as u64);
                let name = format!("rms_norm_rows {rows}x{width}");
                let want = reference(&c.x, &c.w, width);
                let (y16, y32) = c.run(&dev, true);
                let y32 = y32.unwrap();
                assert_close(&format!("{name} y32"), &dev, &y32, &want, TOL_F32);
                assert_same(&y16, &bf16_bits(&y32), &format!("{name}: y16 vs bf16(y32)"));
                assert_bf16_close(&format!("{name} y16"), &dev, &y16, &want, SLACK_BF16);

                // Without the f32 output: the same bf16 bits, nothing else written.
                let (y16_only, _) = c.run(&dev, false);
                assert_same(&y16_only, &y16, &format!("{name}: y16 without y32"));
            }
        }
    }
}

#[test]
fn rms_norm_rows_is_batch_invariant_and_works_in_place() {
    for dev in devices() {
        for &width in &WIDTHS {
            let rows = 33;
            let c = Case::new(rows, width, 500 + width as u64);
            let (y16, y32) = c.run(&dev, true);
            let y32 = y32.unwrap();
            // Rows 0, 17 and 32 alone give the bits they have inside the batch.
            for r in [0, 17, rows - 1] {
                let alone = Case {
                    shape: NormShape { rows: 1, ..c.shape },
                    x: c.x[r * width..(r + 1) * width].to_vec(),
                    w: c.w.clone(),
                };
                let (a16, a32) = alone.run(&dev, true);
                let span = r * width..(r + 1) * width;
                assert_same(
                    &a16,
                    &y16[span.clone()],
                    &format!("row {r} alone (width {width}): y16"),
                );
                assert_same(
                    &bits(&a32.unwrap()),
                    &bits(&y32[span]),
                    &format!("row {r}: y32"),
                );
            }
            // y32 = x (the router reads the normalised rows in place of the residual copy).
            let x = upload(&dev, &c.x);
            let w = upload(&dev, &c.w);
            let y16b = poisoned_tma(&dev, rows, width);
            norm::rms_norm_rows(&dev, &x, &w, &y16b, Some(&x), c.shape).unwrap();
            let what = format!("in place, width {width}");
            assert_same(&bits(&x.to_vec().unwrap()), &bits(&y32), &what);
            assert_same(&y16b.data().to_vec().unwrap(), &y16, "in place y16");
        }
    }
}

/// `rms_norm_rows_adding`: `x` becomes `x + add` exactly (the f32 sum the GEMM epilogue's
/// residual add made, so the pipeline's bits do not move) and the outputs are those of
/// `rms_norm_rows` on that sum, bit for bit; rows past `rows` are untouched in `x`.
#[test]
fn rms_norm_rows_adding_stores_the_sum_and_norms_it() {
    for dev in devices() {
        for (ci, &width) in WIDTHS.iter().enumerate() {
            let rows = 5;
            let c = Case::new(rows, width, 700 + ci as u64);
            let mut r = rng(800 + ci as u64);
            let add = r.normal_vec(rows * width, 1.0);
            let sum: Vec<f32> = c.x.iter().zip(&add).map(|(a, b)| a + b).collect();
            let summed = Case {
                x: sum.clone(),
                ..Case::new(rows, width, 700 + ci as u64)
            };
            let (want16, want32) = summed.run(&dev, true);
            // One row more in x than normed: it must keep its bits.
            let mut x_host = c.x.clone();
            x_host.extend(r.normal_vec(width, 1.0));
            let (x, a, w) = (
                upload(&dev, &x_host),
                upload(&dev, &add),
                upload(&dev, &c.w),
            );
            let y16 = poisoned_tma(&dev, rows + 1, width);
            let y32 = poisoned(&dev, (rows + 1) * width, f32::NAN);
            norm::rms_norm_rows_adding(&dev, &x, &a, &w, &y16, Some(&y32), c.shape).unwrap();
            let what = format!("adding, width {width} on {}", dev.name());
            let x_after = x.to_vec().unwrap();
            assert_same(
                &bits(&x_after[..rows * width]),
                &bits(&sum),
                &format!("{what}: x"),
            );
            assert_same(
                &bits(&x_after[rows * width..]),
                &bits(&x_host[rows * width..]),
                &format!("{what}: x past the rows"),
            );
            let y16 = y16.data().to_vec().unwrap();
            assert_same(&y16[..rows * width], &want16, &format!("{what}: y16"));
            assert!(y16[rows * width..].iter().all(|b| *b == BF16_POISON));
            let y32 = y32.to_vec().unwrap();
            assert_same(
                &bits(&y32[..rows * width]),
                &bits(&want32.unwrap()),
                &format!("{what}: y32"),
            );
        }
    }
}

#[test]
fn norm_shapes_are_checked_before_launching() {
    let dev = Device::emulator();
    let x = upload(&dev, &rng(900).normal_vec(16, 1.0));
    let w = upload(&dev, &[1.0f32; 8]);
    let y16 = poisoned_tma(&dev, 2, 8);
    let y32 = poisoned(&dev, 8, f32::NAN);
    let shape = |rows, width, eps| NormShape { rows, width, eps };
    let err = |s: NormShape, y16: &kiln::gpu::TmaMatrix, y32| {
        norm::rms_norm_rows(&dev, &x, &w, y16, y32, s)
            .unwrap_err()
            .to_string()
    };
    let e = err(shape(3, 8, EPS), &poisoned_tma(&dev, 3, 8), None);
    assert!(e.contains("x has 16 elements, needs 24"), "{e}");
    let e = err(shape(2, 0, EPS), &y16, None);
    assert!(e.contains("width must be positive"), "{e}");
    let e = err(shape(2, 6, EPS), &y16, None);
    assert!(e.contains("width 6 is not a multiple of 4"), "{e}");
    let e = err(shape(2, 8, -1.0), &y16, None);
    assert!(e.contains("eps -1"), "{e}");
    let e = err(shape(2, 8, EPS), &y16, Some(&y32));
    assert!(e.contains("y32 has 8 elements, needs 16"), "{e}");
    let e = err(shape(2, 8, EPS), &poisoned_tma(&dev, 1, 8), None);
    assert!(
        e.contains("y16 is 1 × 8, needs 8 columns and at least 2 rows"),
        "{e}"
    );
    let short = upload(&dev, &[1.0f32; 8]);
    let e = norm::rms_norm_rows_adding(&dev, &x, &short, &w, &y16, None, shape(2, 8, EPS))
        .unwrap_err()
        .to_string();
    assert!(e.contains("add has 8 elements, needs 16"), "{e}");
    let e = norm::rms_norm_rows_adding(&dev, &x, &x, &w, &y16, Some(&x), shape(2, 8, EPS))
        .unwrap_err()
        .to_string();
    assert!(e.contains("y32 is x"), "{e}");
    let e = err(shape(1, 8, EPS), &poisoned_tma(&dev, 2, 16), None);
    assert!(e.contains("y16 is 2 × 16, needs 8 columns"), "{e}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
