//! The Hopper GEMMs (`gemm_wgmma::matmul`, f32 out with bias and residual, and
//! `gemm_wgmma::matmul_swiglu`, bf16 out of SwiGLU over interleaved gate|up weights) against
//! the float64 reference (`kiln::reference::ops`), their batch invariance (a row's bits do not
//! depend on the call's row count or on where the row sits in its 128-row tile), and the
//! wrappers' shape errors. Emulator by default, the GPU with `KILN_TEST_DEVICE=cuda|all`.
//!
//! Inputs are bf16 (x and w uploaded as bf16 bits); the reference uses their exact values, so
//! what is left is the kernel's own arithmetic:
//! - f32 out: rel L2 1e-5. f32 accumulation on the tensor cores, ~√k·2^-24 relative typical
//!   (≈ 2e-6 at k = 1000; measured on the H200: 7e-8 at k = 64, 2.1e-6 at k = 2048, 4.4e-6 at
//!   k = 4096; the emulator, which sums each k16 step in f64, ≤ 1.6e-7); a missing K slice, a
//!   shifted row or column, or a lost bias/residual is ≥ 1e-2.
//!   The epilogue is checked bit for bit besides: `bias` and `+ y` are f32 adds after the
//!   product, so `(plain + bias) + y` recomputed in f32 from the plain product's bits must
//!   match exactly.
//! - bf16 out (`gemm_wgmma::matmul_bf16`, the Q|K|V projection): the same sums as the f32
//!   kernel, bias added in f32, then one rounding, so its bits must be exactly the bf16 of the
//!   f32 kernel's result, with and without bias, every tiling, every shape.
//! - SwiGLU: one bf16 rounding of the f32 `silu(g)·u`, element-wise within
//!   `(2^-8 + 3e-5)·|want| + 3e-5·rms(want)` (`common::assert_bf16_close`; 3e-5 covers the f32
//!   accumulation of g and u on the tensor cores, ~1e-6 of their scale typical at k ≤ 1000 and a
//!   few times that for the worst of ~10^5 elements, and the approximate exp in silu).
//!
//! Shapes: rows 1, 7, 129, 300 (partial tiles, TMA's zero fill past the last row), m 128, 200,
//! 640 (partial column tiles), k 64, 72, 136, 1000 (one K slice, partial last slices: TMA's
//! zero fill past k). Outputs start poisoned (NaN / bf16 0xFFFF) with a row more than written,
//! which must stay poisoned.

mod common;
use common::*;
use gpu_kernels::gemm_wgmma::{self as gemm_wgmma_kernels, HALF_BN};
use kiln::gpu::Device;
use kiln::gpu::ops::gemm::Epilogue;
use kiln::gpu::ops::gemm_wgmma::{
    self, SegmentTiles, TileWidth, interleave_gate_up, interleaved_rows,
};
use kiln::reference::ops::{self, matmul};

const TOL: f64 = 1e-5;
/// Every tiling of the dense kernels: 128 and 256 columns per block, and 256 in cluster pairs
/// sharing B (on the emulator one cluster of two, so a block walks several tiles, and with an
/// odd number of row tiles the last pair's second block has no rows and only loads B).
const WIDTHS: [TileWidth; 3] = [TileWidth::Narrow, TileWidth::Wide, TileWidth::WidePaired];
const SWIGLU_SLACK: f64 = 3e-5;

/// `n` fresh bf16 values of standard deviation `std`: bits and exact values.
fn bf16_random(r: &mut kiln::rng::Rng, n: usize, std: f64) -> (Vec<u16>, Vec<f64>) {
    bf16_bits_and_values(&r.normal_vec(n, std))
}

/// Inputs of one f32-out case: x `[rows][k]`, w `[m][k]` (bf16), bias `[m]`, residual.
struct Case {
    rows: usize,
    m: usize,
    k: usize,
    x: (Vec<u16>, Vec<f64>),
    w: (Vec<u16>, Vec<f64>),
    bias: Vec<f32>,
    resid: Vec<f32>,
}

impl Case {
    fn new(rows: usize, m: usize, k: usize, salt: u64) -> Case {
        let mut r = rng(salt);
        Case {
            rows,
            m,
            k,
            x: bf16_random(&mut r, rows * k, 1.0),
            w: bf16_random(&mut r, m * k, 1.0 / (k as f64).sqrt()),
            bias: r.normal_vec(m, 0.5),
            resid: r.normal_vec(rows * m, 1.0),
        }
    }

    fn name(&self, width: TileWidth) -> String {
        format!("{}x{}x{} {width:?}", self.rows, self.m, self.k)
    }
}

/// `matmul` of rows `first..first + rows` of `c`'s x with `c`'s weights in tiles of `width`
/// (and bias when `bias`); `y` starts as `init` (rows·m values; `+ y` when given, else NaN) followed by one
/// row of NaN that must stay NaN. Returns the rows·m results.
fn run_matmul(
    dev: &Device,
    c: &Case,
    (first, rows, width): (usize, usize, TileWidth),
    bias: bool,
    init: Option<&[f32]>,
) -> Vec<f32> {
    let (m, k) = (c.m, c.k);
    let x = tma_upload(dev, &c.x.0[first * k..(first + rows) * k], rows, k);
    let w = tma_upload(dev, &c.w.0, m, k);
    let b = upload(dev, &c.bias);
    let mut y0 = init.map_or_else(|| vec![f32::NAN; rows * m], <[f32]>::to_vec);
    y0.extend(std::iter::repeat_n(f32::NAN, m));
    let y = upload(dev, &y0);
    let epilogue = Epilogue {
        bias: bias.then_some(&b),
        add_to_y: init.is_some(),
    };
    gemm_wgmma::matmul_tiled(dev, &x, &w, &y, (rows, width), epilogue).unwrap();
    let got = y.to_vec().unwrap();
    assert!(
        got[rows * m..].iter().all(|v| v.is_nan()),
        "{}: y written past row {rows}",
        c.name(width),
    );
    got[..rows * m].to_vec()
}

/// `matmul_bf16` of rows `first..first + rows` of `c` in tiles of `width` (with `c`'s bias
/// when `bias`) into a poisoned `y` with one row more, which must stay poisoned. Returns the
/// rows·m bf16 bits.
fn run_matmul_bf16(
    dev: &Device,
    c: &Case,
    (first, rows, width): (usize, usize, TileWidth),
    bias: bool,
) -> Vec<u16> {
    let (m, k) = (c.m, c.k);
    let x = tma_upload(dev, &c.x.0[first * k..(first + rows) * k], rows, k);
    let w = tma_upload(dev, &c.w.0, m, k);
    let b = upload(dev, &c.bias);
    let y = poisoned(dev, (rows + 1) * m, BF16_POISON);
    let epilogue = Epilogue::bias(bias.then_some(&b));
    gemm_wgmma::matmul_bf16_tiled(dev, &x, &w, &y, (rows, width), epilogue).unwrap();
    let got = y.to_vec().unwrap();
    assert!(
        got[rows * m..].iter().all(|b| *b == BF16_POISON),
        "{}: bf16 y written past row {rows}",
        c.name(width),
    );
    got[..rows * m].to_vec()
}

#[test]
fn matmul_with_bias_and_residual_matches_f64() {
    let shapes = [
        (1, 128, 64),
        (7, 200, 72),
        (129, 640, 136),
        (300, 200, 1000),
        (300, 128, 72),
        (1, 640, 1000),
        (7, 128, 136),
        (129, 200, 64),
        // m not a multiple of 4 (even, then odd): the bf16 stores of four adjacent columns
        // fall back to single elements at the edge.
        (33, 202, 72),
        (5, 131, 64),
    ];
    for dev in devices() {
        for ((i, &(rows, m, k)), width) in shapes
            .iter()
            .enumerate()
            .flat_map(|s| WIDTHS.map(|w| (s, w)))
        {
            let c = Case::new(rows, m, k, 100 + i as u64);
            let plain_want = matmul(&c.x.1, &c.w.1, rows, m, k);
            let plain = run_matmul(&dev, &c, (0, rows, width), false, None);
            assert_close(
                &format!("matmul {}", c.name(width)),
                &dev,
                &plain,
                &plain_want,
                TOL,
            );

            // Bias and residual: vs f64, and exactly the f32 adds after the product.
            let both = run_matmul(&dev, &c, (0, rows, width), true, Some(&c.resid));
            let want: Vec<f64> = plain_want
                .iter()
                .enumerate()
                .map(|(i, p)| p + f64::from(c.bias[i % m]) + f64::from(c.resid[i]))
                .collect();
            let name = format!("matmul + bias + residual {}", c.name(width));
            assert_close(&name, &dev, &both, &want, TOL);
            let exact: Vec<f32> = plain
                .iter()
                .enumerate()
                .map(|(i, p)| (p + c.bias[i % m]) + c.resid[i])
                .collect();
            assert_same(
                &bits(&both),
                &bits(&exact),
                &format!("{name}: epilogue adds"),
            );

            // Bias alone (the QKV projection's), on the small cases.
            let exact: Vec<f32> = plain
                .iter()
                .enumerate()
                .map(|(i, p)| p + c.bias[i % m])
                .collect();
            if rows * m * k <= 200 * 200 * 136 {
                let biased = run_matmul(&dev, &c, (0, rows, width), true, None);
                assert_same(
                    &bits(&biased),
                    &bits(&exact),
                    &format!("{}: bias only", c.name(width)),
                );
            }

            // bf16 out: one rounding of the same f32 values, bias or not.
            for (bias, f32_result) in [(false, &plain), (true, &exact)] {
                assert_same(
                    &run_matmul_bf16(&dev, &c, (0, rows, width), bias),
                    &bf16_bits(f32_result),
                    &format!("{}: bf16 out, bias {bias}", c.name(width)),
                );
            }
        }
    }
}

/// Inputs of a SwiGLU case: x `[rows][k]`, gate and up `[m][k]` (bf16).
struct SwigluCase {
    rows: usize,
    m: usize,
    k: usize,
    x: (Vec<u16>, Vec<f64>),
    gate: (Vec<u16>, Vec<f64>),
    up: (Vec<u16>, Vec<f64>),
}

impl SwigluCase {
    fn new(rows: usize, m: usize, k: usize, salt: u64) -> SwigluCase {
        let mut r = rng(salt);
        let std = 1.0 / (k as f64).sqrt();
        SwigluCase {
            rows,
            m,
            k,
            x: bf16_random(&mut r, rows * k, 1.0),
            gate: bf16_random(&mut r, m * k, 2.0 * std),
            up: bf16_random(&mut r, m * k, std),
        }
    }

    /// `silu(x·gateᵀ) ⊙ (x·upᵀ)` in f64.
    fn reference(&self) -> Vec<f64> {
        let g = matmul(&self.x.1, &self.gate.1, self.rows, self.m, self.k);
        let u = matmul(&self.x.1, &self.up.1, self.rows, self.m, self.k);
        g.iter().zip(&u).map(|(g, u)| ops::swiglu(*g, *u)).collect()
    }

    /// Rows `first..first + rows` of x through the kernel in tiles of `width` (bf16 bits of h).
    fn run(&self, dev: &Device, (first, rows, width): (usize, usize, TileWidth)) -> Vec<u16> {
        let (m, k) = (self.m, self.k);
        let x = tma_upload(dev, &self.x.0[first * k..(first + rows) * k], rows, k);
        let wgu = interleave_gate_up(&self.gate.0, &self.up.0, m, k);
        let w = tma_upload(dev, &wgu, interleaved_rows(m), k);
        let h = poisoned_tma(dev, rows + 1, m);
        gemm_wgmma::matmul_swiglu_tiled(dev, &x, &w, &h, (rows, width)).unwrap();
        let got = h.data().to_vec().unwrap();
        assert!(
            got[rows * m..].iter().all(|b| *b == BF16_POISON),
            "swiglu {rows}x{m}x{k} {width:?}: h written past row {rows}"
        );
        got[..rows * m].to_vec()
    }
}

#[test]
fn matmul_swiglu_matches_f64() {
    // m not a multiple of 64 (96, 200: a half-empty gate|up block) and a multiple of 128.
    let shapes = [
        (1, 96, 64),
        (7, 200, 72),
        (129, 128, 136),
        (300, 96, 136),
        (7, 64, 1000),
    ];
    for dev in devices() {
        for ((i, &(rows, m, k)), width) in shapes
            .iter()
            .enumerate()
            .flat_map(|s| WIDTHS.map(|w| (s, w)))
        {
            let c = SwigluCase::new(rows, m, k, 200 + i as u64);
            let got = c.run(&dev, (0, rows, width));
            let name = format!("swiglu {rows}x{m}x{k} {width:?}");
            assert_bf16_close(&name, &dev, &got, &c.reference(), SWIGLU_SLACK);
        }
    }
}

/// Rows of a 300-row call in wide tiles, computed again in narrow tiles and in paired wide
/// tiles (clusters of two sharing B), in calls of 1 row, of 7 rows, and starting at rows 3 and
/// 77 (other positions inside the 128-row tile, other neighbours, other row counts, the other
/// tilings): the same bits, for the f32, bf16 and SwiGLU kernels. The smaller calls run as
/// `Auto` chooses (narrow at these sizes) and paired (a 1-row call is one pair whose second
/// block has no rows).
#[test]
fn gemms_are_batch_invariant() {
    let (rows, m, k) = (300, 200, 136);
    // (first row, row count) of each smaller call.
    let calls = [
        (0, 1),
        (3, 1),
        (128, 1),
        (299, 1),
        (0, 7),
        (125, 7),
        (293, 7),
        (3, 297),
        (77, 129),
    ];
    for dev in devices() {
        let c = Case::new(rows, m, k, 300);
        let full = run_matmul(&dev, &c, (0, rows, TileWidth::Wide), true, None);
        let s = SwigluCase::new(rows, m, k, 301);
        let full_h = s.run(&dev, (0, rows, TileWidth::Wide));
        let narrow = run_matmul(&dev, &c, (0, rows, TileWidth::Narrow), true, None);
        assert_same(&bits(&narrow), &bits(&full), "matmul narrow vs wide tiles");
        let narrow_h = s.run(&dev, (0, rows, TileWidth::Narrow));
        assert_same(&narrow_h, &full_h, "swiglu narrow vs wide tiles");
        let full_16 = run_matmul_bf16(&dev, &c, (0, rows, TileWidth::Wide), true);
        let narrow_16 = run_matmul_bf16(&dev, &c, (0, rows, TileWidth::Narrow), true);
        assert_same(&narrow_16, &full_16, "bf16 narrow vs wide tiles");
        // Paired: 300 rows are 3 row tiles, so the second pair's second block has no rows and
        // only loads B for its peer.
        let paired = run_matmul(&dev, &c, (0, rows, TileWidth::WidePaired), true, None);
        assert_same(&bits(&paired), &bits(&full), "matmul paired vs wide tiles");
        let paired_h = s.run(&dev, (0, rows, TileWidth::WidePaired));
        assert_same(&paired_h, &full_h, "swiglu paired vs wide tiles");
        let paired_16 = run_matmul_bf16(&dev, &c, (0, rows, TileWidth::WidePaired), true);
        assert_same(&paired_16, &full_16, "bf16 paired vs wide tiles");
        for ((first, n), width) in calls
            .into_iter()
            .flat_map(|call| [TileWidth::Auto, TileWidth::WidePaired].map(|w| (call, w)))
        {
            let got = run_matmul(&dev, &c, (first, n, width), true, None);
            let what = format!(
                "rows {first}..{} alone ({width:?}) vs in 300 on {}",
                first + n,
                dev.name()
            );
            let span = first * m..(first + n) * m;
            assert_same(
                &bits(&got),
                &bits(&full[span.clone()]),
                &format!("matmul {what}"),
            );
            let got_16 = run_matmul_bf16(&dev, &c, (first, n, width), true);
            assert_same(&got_16, &full_16[span.clone()], &format!("bf16 {what}"));
            let got_h = s.run(&dev, (first, n, width));
            assert_same(&got_h, &full_h[span], &format!("swiglu {what}"));
        }
    }
}

/// `matmul_segments` (tiling `tiles`) of rows `first..first + rows` of `c` in K segments of
/// `seg_k` into a poisoned `y` with one row more, which must stay poisoned. Returns the planes
/// (`[segments][rows][m]`).
fn run_segments(
    dev: &Device,
    c: &Case,
    (first, rows, tiles): (usize, usize, SegmentTiles),
    seg_k: usize,
) -> Vec<f32> {
    let (m, k) = (c.m, c.k);
    let len = k.div_ceil(seg_k) * rows * m;
    let x = tma_upload(dev, &c.x.0[first * k..(first + rows) * k], rows, k);
    let w = tma_upload(dev, &c.w.0, m, k)
        .with_second_box(dev, HALF_BN as u32)
        .unwrap();
    let y = poisoned(dev, len + m, f32::NAN);
    gemm_wgmma::matmul_segments_tiled(dev, &x, &w, &y, (rows, tiles), seg_k).unwrap();
    let got = y.to_vec().unwrap();
    assert!(
        got[len..].iter().all(|v| v.is_nan()),
        "{}x{}x{k} in segments of {seg_k} ({tiles:?}): y written past its planes",
        rows,
        m
    );
    got[..len].to_vec()
}

/// Each plane of the K-segmented GEMM (the MoE router's) is its segment's product against
/// float64, segments ending inside a 64-wide slice included (the rest zero-filled), in
/// narrow and in half-width tiles, which give the same bits (`m64n128k16` and `m64n64k16`:
/// the host picks either per call); one segment over all of K gives the plain GEMM's bits;
/// and a row's partials are the same bits in a call of any size.
#[test]
fn matmul_segments_match_f64_per_segment() {
    // (rows, m, k, segment width)
    let shapes = [
        (7, 200, 200, 64),
        (129, 384, 1000, 512),
        (300, 128, 72, 64),
        (5, 131, 136, 128),
    ];
    for dev in devices() {
        for (i, &(rows, m, k, seg_k)) in shapes.iter().enumerate() {
            let c = Case::new(rows, m, k, 400 + i as u64);
            let got = run_segments(&dev, &c, (0, rows, SegmentTiles::Narrow), seg_k);
            for (s, plane) in got.chunks(rows * m).enumerate() {
                let cols = s * seg_k..((s + 1) * seg_k).min(k);
                let w = cols.len();
                let cut = |v: &[f64], n: usize| -> Vec<f64> {
                    (0..n)
                        .flat_map(|r| v[r * k..][cols.clone()].to_vec())
                        .collect()
                };
                let want = matmul(&cut(&c.x.1, rows), &cut(&c.w.1, m), rows, m, w);
                let name = format!(
                    "{} segment {s} of {seg_k} on {}",
                    c.name(TileWidth::Narrow),
                    dev.name()
                );
                assert_close(&name, &dev, plane, &want, TOL);
            }
            let half = run_segments(&dev, &c, (0, rows, SegmentTiles::Half), seg_k);
            let what = format!(
                "{rows}x{m}x{k}: half-width vs narrow tiles on {}",
                dev.name()
            );
            assert_same(&bits(&half), &bits(&got), &what);
            let whole = run_segments(
                &dev,
                &c,
                (0, rows, SegmentTiles::Narrow),
                k.div_ceil(64) * 64,
            );
            let plain = run_matmul(&dev, &c, (0, rows, TileWidth::Narrow), false, None);
            assert_same(
                &bits(&whole),
                &bits(&plain),
                "one segment vs the plain GEMM",
            );
            for first in [0, rows / 2, rows - 1] {
                let alone = run_segments(&dev, &c, (first, 1, SegmentTiles::Auto), seg_k);
                for (s, plane) in alone.chunks(m).enumerate() {
                    let at = s * rows * m + first * m;
                    let what = format!("segment {s}, row {first} alone vs in {rows}");
                    assert_same(&bits(plane), &bits(&got[at..at + m]), &what);
                }
            }
        }
    }
}

/// Each tiling reads `w` through the map of its boxes: a matrix without the half-width map is
/// refused with a shape error where half-width tiles would run, not read in the wrong rows.
#[test]
fn matmul_segments_refuse_a_missing_map() {
    for dev in devices() {
        let c = Case::new(8, 128, 128, 410);
        let x = tma_upload(&dev, &c.x.0, 8, 128);
        let w = tma_upload(&dev, &c.w.0, 128, 128);
        let y = poisoned(&dev, 2 * 8 * 128, f32::NAN);
        for tiles in [SegmentTiles::Half, SegmentTiles::Auto] {
            let err =
                gemm_wgmma::matmul_segments_tiled(&dev, &x, &w, &y, (8, tiles), 64).unwrap_err();
            assert!(
                err.to_string().contains("boxes of 64 rows"),
                "{tiles:?}: {err}"
            );
        }
        gemm_wgmma::matmul_segments_tiled(&dev, &x, &w, &y, (8, SegmentTiles::Narrow), 64).unwrap();
    }
}

/// The dense tile walk visits every (row, column) unit of the grid exactly once, band by band,
/// and ends there: a unit skipped or visited twice would leave output unwritten or race.
#[test]
fn raster_walks_every_tile_once() {
    for (rows, cols, band) in [
        (64, 32, 16),
        (5, 3, 16),
        (17, 7, 16),
        (1, 1, 16),
        (33, 5, 8),
    ] {
        let mut seen = vec![0u32; rows * cols];
        let n = (rows * cols) as u32;
        for u in 0..n + 2 * band * cols as u32 {
            match gemm_wgmma_kernels::raster(u, (rows as u32, cols as u32), band) {
                Some((r, c)) => {
                    assert!(
                        u < n,
                        "{rows}x{cols}/{band}: unit {u} past the end gave ({r}, {c})"
                    );
                    let band_of = |row: u32| row / band;
                    assert_eq!(
                        band_of(r),
                        u / (band * cols as u32),
                        "{rows}x{cols}: unit {u} out of its band"
                    );
                    seen[r as usize * cols + c as usize] += 1;
                }
                None => assert!(u >= n, "{rows}x{cols}/{band}: unit {u} of {n} gave nothing"),
            }
        }
        assert!(
            seen.iter().all(|&v| v == 1),
            "{rows}x{cols}/{band}: {seen:?}"
        );
    }
}

#[test]
fn interleave_gate_up_lays_out_blocks_of_64() {
    let (m, k) = (96, 8);
    let gate: Vec<u16> = (0..m * k).map(|i| (i / k) as u16 + 1).collect();
    let up: Vec<u16> = (0..m * k).map(|i| (i / k) as u16 + 1001).collect();
    let w = interleave_gate_up(&gate, &up, m, k);
    assert_eq!(interleaved_rows(m), 256);
    assert_eq!(w.len(), 256 * k);
    let row = |r: usize| w[r * k];
    assert!(w.chunks(k).all(|r| r.iter().all(|v| *v == r[0])));
    for r in 0..64 {
        assert_eq!(row(r), r as u16 + 1, "gate row {r}");
        assert_eq!(row(64 + r), r as u16 + 1001, "up row {r}");
    }
    for r in 0..32 {
        assert_eq!(row(128 + r), 64 + r as u16 + 1, "gate row {}", 64 + r);
        assert_eq!(row(192 + r), 64 + r as u16 + 1001, "up row {}", 64 + r);
        assert_eq!((row(160 + r), row(224 + r)), (0, 0), "padding rows");
    }
}

#[test]
fn wgmma_wrappers_reject_bad_shapes_before_launching() {
    let dev = Device::emulator();
    // k must be a multiple of 8 (TMA: 16-byte row strides): no TmaMatrix can be made otherwise.
    for cols in [4, 100, 1001] {
        let e = dev.tma_zeros(4, cols, "x").err().unwrap().to_string();
        assert!(e.contains("cols a multiple of 8"), "{cols}: {e}");
    }
    let x = poisoned_tma(&dev, 2, 64);
    let w = poisoned_tma(&dev, 128, 72);
    let y = poisoned(&dev, 2 * 128, f32::NAN);
    let e = gemm_wgmma::matmul(&dev, &x, &w, &y, 2, Epilogue::STORE)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x is 2 × 64, needs 72 columns"),
        "mismatched k: {e}"
    );
    let w = poisoned_tma(&dev, 128, 64);
    let e = gemm_wgmma::matmul(&dev, &x, &w, &y, 3, Epilogue::STORE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 3 rows"), "too few rows: {e}");
    let short = poisoned(&dev, 2 * 128 - 1, f32::NAN);
    let e = gemm_wgmma::matmul(&dev, &x, &w, &short, 2, Epilogue::STORE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("y has 255 elements, needs 256"), "{e}");
    let b = upload(&dev, &[0.5f32; 127]);
    let e = gemm_wgmma::matmul(&dev, &x, &w, &y, 2, Epilogue::bias(Some(&b)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias has 127 elements, needs 128"), "{e}");
    let y16 = poisoned(&dev, 2 * 128, BF16_POISON);
    let e = gemm_wgmma::matmul_bf16(&dev, &x, &w, &y16, 2, Epilogue::ADD_TO_Y)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a bf16 output cannot be added to"), "{e}");
    // Maps read in other boxes than the dense tiles' (here the K-segmented GEMM's 64-row
    // boxes) would bring other byte counts than a dense tile waits for: refused, for x and w.
    let halves = |rows, cols| poisoned_tma(&dev, rows, cols).reboxed(&dev, 64).unwrap();
    let (x64, w64, wgu) = (halves(2, 64), halves(128, 64), poisoned_tma(&dev, 128, 64));
    let h2 = poisoned_tma(&dev, 2, 64);
    for (e, name) in [
        (
            gemm_wgmma::matmul(&dev, &x64, &w, &y, 2, Epilogue::STORE),
            "x",
        ),
        (
            gemm_wgmma::matmul(&dev, &x, &w64, &y, 2, Epilogue::STORE),
            "w",
        ),
        (
            gemm_wgmma::matmul_bf16(&dev, &x64, &w, &y16, 2, Epilogue::STORE),
            "x",
        ),
        (
            gemm_wgmma::matmul_bf16(&dev, &x, &w64, &y16, 2, Epilogue::STORE),
            "w",
        ),
        (gemm_wgmma::matmul_swiglu(&dev, &x64, &wgu, &h2, 2), "x"),
        (gemm_wgmma::matmul_swiglu(&dev, &x, &w64, &h2, 2), "w"),
    ] {
        let e = e.unwrap_err().to_string();
        let want = format!("{name} is read in boxes of 64 rows; the dense GEMMs need");
        assert!(e.contains(&want), "{e}");
    }

    // SwiGLU: h has m columns; w_gate_up must have interleaved_rows(m) rows of k.
    let h = poisoned_tma(&dev, 2, 96);
    let wgu = poisoned_tma(&dev, interleaved_rows(96), 64);
    let e = gemm_wgmma::matmul_swiglu(&dev, &x, &poisoned_tma(&dev, 192, 64), &h, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("w_gate_up is 192 × 64"), "not interleaved: {e}");
    let e = gemm_wgmma::matmul_swiglu(&dev, &poisoned_tma(&dev, 2, 72), &wgu, &h, 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x is 2 × 72, needs 64 columns"),
        "mismatched k: {e}"
    );
    let e = gemm_wgmma::matmul_swiglu(&dev, &x, &wgu, &h, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 3 rows"), "too few rows: {e}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
