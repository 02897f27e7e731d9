//! f32 ↔ bf16 conversions: bit for bit against an independent rounding (the `half` crate),
//! including ties, subnormals, infinities, NaN and the largest finite values.

mod common;
use common::*;
use gpu_kernels::device::float::split_bf16x3;
use kiln::gpu::ops::convert;

#[test]
fn bf16_conversions_round_to_nearest_even_bit_exactly() {
    for dev in devices() {
        let mut r = rng(500);
        let mut x = r.normal_vec(4099, 10.0);
        x.extend([
            0.0,
            -0.0,
            1.0 + f32::EPSILON * 64.0,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
        ]);
        let n = x.len();
        let xb = upload(&dev, &x);
        let y = poisoned(&dev, n, 0xffffu16);
        convert::f32_to_bf16(&dev, &xb, &y, n).unwrap();
        let got = y.to_vec().unwrap();
        let want: Vec<u16> = x
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect();
        assert_eq!(got, want, "f32 → bf16 on {}", dev.name());
        let nan = upload(&dev, &[f32::NAN]);
        let nb = poisoned(&dev, 1, 0u16);
        convert::f32_to_bf16(&dev, &nan, &nb, 1).unwrap();
        assert!(half::bf16::from_bits(nb.to_vec().unwrap()[0]).is_nan());

        let back = poisoned(&dev, n, f32::NAN);
        convert::bf16_to_f32(&dev, &y, &back, n).unwrap();
        let want: Vec<f32> = got
            .iter()
            .map(|b| half::bf16::from_bits(*b).to_f32())
            .collect();
        assert_eq!(
            bits(&back.to_vec().unwrap()),
            bits(&want),
            "bf16 → f32 on {}",
            dev.name()
        );
    }
}

/// The router weights' split (`float::split_bf16x3`, host and device): lo, mid and hi sum to
/// the f32 weight exactly (in float64, and in f32 added as the router adds its partials:
/// `(lo + mid) + hi`), each part is a bf16 of at most 8 significant bits below the previous
/// one's rounding (|mid| ≤ ulp(hi)/2, |lo| ≤ ulp(mid)/2), over the whole f32 range: random bit
/// patterns, the largest finite values (hi truncated instead of overflowing), subnormals (lo
/// rounded on bf16's subnormal grid: an error under 2⁻¹³⁴), ±0, ±inf and NaN (hi alone).
/// The kernel gives the host's bits on every device.
#[test]
fn router_weight_split_is_exact() {
    let mut r = rng(501);
    let mut w: Vec<f32> = (0..20_000)
        .map(|_| f32::from_bits(r.next_u64() as u32))
        .filter(|v| v.is_finite())
        .collect();
    w.extend(r.normal_vec(4096, 0.03));
    w.extend([
        0.0,
        -0.0,
        f32::MAX,
        -f32::MAX,
        f32::from_bits(0x7f7f_8000),
        f32::from_bits(0x7f7f_7fff),
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x0000_ffff),
        -f32::from_bits(0x0012_3457),
        f32::from_bits(0x3f80_8001),
        2f32.powi(-110) * 1.234_567_9,
    ]);
    let v = |b: u16| f64::from(half::bf16::from_bits(b).to_f32());
    for &x in &w {
        let [lo, mid, hi] = split_bf16x3(x);
        let parts = [v(lo), v(mid), v(hi)];
        assert!(parts.iter().all(|p| p.is_finite()), "{x:e}: {parts:?}");
        let sum = parts[0] + parts[1] + parts[2];
        let err = (sum - f64::from(x)).abs();
        if f64::from(x).abs() >= 2f64.powi(-110) {
            assert_eq!(sum, f64::from(x), "{x:e} ({:#x}): {parts:?}", x.to_bits());
            let f32_sum = (parts[0] as f32 + parts[1] as f32) + parts[2] as f32;
            assert_eq!(
                f32_sum.to_bits(),
                x.to_bits(),
                "{x:e}: (lo + mid) + hi in f32"
            );
        } else {
            assert!(err <= 2f64.powi(-134), "{x:e}: error {err:e}");
        }
        let ulp = |p: f64| 2f64.powi(p.abs().log2().floor() as i32 - 7);
        if parts[2] != 0.0 && parts[2].abs() < 2f64.powi(127) {
            assert!(
                parts[1].abs() <= ulp(parts[2]) / 2.0,
                "{x:e}: mid {parts:?}"
            );
        }
        if parts[1] != 0.0 && parts[1].abs() >= 2f64.powi(-126) {
            assert!(parts[0].abs() <= ulp(parts[1]) / 2.0, "{x:e}: lo {parts:?}");
        }
    }
    for (x, want_hi) in [
        (f32::INFINITY, 0x7f80),
        (f32::NEG_INFINITY, 0xff80),
        (f32::MAX, 0x7f7f),
        (-f32::MAX, 0xff7f),
    ] {
        assert_eq!(split_bf16x3(x)[2], want_hi, "{x:e}");
    }
    let [lo, mid, hi] = split_bf16x3(f32::NAN);
    assert!((lo, mid) == (0, 0) && half::bf16::from_bits(hi).is_nan());
    assert_eq!(split_bf16x3(f32::INFINITY)[..2], [0, 0]);

    w.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
    let n = w.len();
    let want: Vec<u16> = (0..3)
        .flat_map(|p| w.iter().map(move |&x| split_bf16x3(x)[p]))
        .collect();
    for dev in devices() {
        let y = poisoned(&dev, 3 * n + 1, 0xffffu16);
        convert::f32_to_bf16x3(&dev, &upload(&dev, &w), &y, n).unwrap();
        let got = y.to_vec().unwrap();
        assert_eq!(got[..3 * n], want[..], "f32 → 3 × bf16 on {}", dev.name());
        assert_eq!(got[3 * n], 0xffff, "written past 3 n on {}", dev.name());
    }
}
