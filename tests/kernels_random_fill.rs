//! Seeded random fills: the device's bits equal the host's evaluation of the same counter-based
//! function (`random_fill::uniform`, rounded to bf16 by the `half` crate), elements past `n` are
//! left alone, a different seed gives different values, and the values look uniform on
//! [offset − scale, offset + scale) (mean and variance within a few standard errors).

mod common;
use common::*;
use gpu_kernels::random_fill::uniform;
use kiln::gpu::ops::random_fill::{Fill, fill_bf16, fill_f32};

fn want(fill: Fill, i: usize) -> f32 {
    fill.offset + fill.scale * uniform(fill.seed, i as u64)
}

/// Mean and variance of `v` are those of uniform [offset − scale, offset + scale), within
/// 6 standard errors.
fn check_uniform(what: &str, v: &[f64], fill: Fill) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let (s, o) = (fill.scale as f64, fill.offset as f64);
    let want_var = s * s / 3.0;
    assert!(
        (mean - o).abs() < 6.0 * (want_var / n).sqrt(),
        "{what}: mean {mean}, want {o}"
    );
    // Var of (x − μ)² for a uniform: s⁴ (1/5 − 1/9).
    let se_var = (s.powi(4) * (1.0 / 5.0 - 1.0 / 9.0) / n).sqrt();
    assert!(
        (var - want_var).abs() < 6.0 * se_var + 1e-3 * want_var,
        "{what}: variance {var}, want {want_var}"
    );
}

#[test]
fn random_fills_are_seeded_counters_bit_for_bit() {
    for dev in devices() {
        let seed = rng(900).next_u64();
        let n = if dev.is_cuda() { 17_000_003 } else { 30_001 };
        let what = format!("n={n} on {}", dev.name());

        let fill = Fill::with_std(seed, 0.02);
        let out = poisoned(&dev, n + 5, 0xffffu16);
        fill_bf16(&dev, &out, n, fill).unwrap();
        let got = out.to_vec().unwrap();
        for (i, &b) in got[..n].iter().enumerate() {
            let w = half::bf16::from_f32(want(fill, i)).to_bits();
            assert_eq!(b, w, "bf16 element {i}, {what}");
        }
        assert!(got[n..].iter().all(|&b| b == 0xffff), "past n, {what}");
        let values: Vec<f64> = got[..n]
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f64())
            .collect();
        check_uniform(&format!("bf16 {what}"), &values, fill);

        let fill = Fill {
            seed: seed ^ 1,
            scale: 0.1,
            offset: 1.0,
        };
        let out = poisoned(&dev, n, f32::NAN);
        fill_f32(&dev, &out, n, fill).unwrap();
        let got = out.to_vec().unwrap();
        for (i, &v) in got.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                want(fill, i).to_bits(),
                "f32 element {i}, {what}"
            );
        }
        let values: Vec<f64> = got.iter().map(|&v| v as f64).collect();
        check_uniform(&format!("f32 {what}"), &values, fill);
        // Another seed: another stream (a handful of equal values at most, by chance).
        let other: Vec<f32> = (0..1000).map(|i| want(Fill { seed, ..fill }, i)).collect();
        let same = other.iter().zip(&got).filter(|(a, b)| a == b).count();
        assert!(
            same < 10,
            "seeds {seed} and {} agree on {same}/1000",
            seed ^ 1
        );
    }
}
