//! f32 ↔ bf16 conversions: bit for bit against an independent rounding (the `half` crate),
//! including ties, subnormals, infinities, NaN and the largest finite values.

mod common;
use common::*;
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
