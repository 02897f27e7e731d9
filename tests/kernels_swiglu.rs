//! SwiGLU against the float64 reference (`kiln::reference::ops::swiglu`). Tolerance 2e-6: one
//! `ex2.approx`-based sigmoid and two products in f32 (~3e-7 observed).

mod common;
use common::*;
use kiln::gpu::ops::swiglu::swiglu;
use kiln::reference::ops;

#[test]
fn swiglu_matches_f64() {
    for dev in devices() {
        for n in [1, 5, 33, 257 * 512] {
            let mut r = rng(300 + n as u64);
            let (g, u) = (r.normal_vec(n, 4.0), r.normal_vec(n, 1.0));
            let y = poisoned(&dev, n, f32::NAN);
            swiglu(&dev, &upload(&dev, &g), &upload(&dev, &u), &y, n).unwrap();
            let want: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| ops::swiglu(f64::from(*g), f64::from(*u)))
                .collect();
            assert_close(
                &format!("swiglu {n}"),
                &dev,
                &y.to_vec().unwrap(),
                &want,
                2e-6,
            );
        }
    }
}

#[test]
fn swiglu_checks_lengths_before_launching() {
    let dev = kiln::gpu::Device::emulator();
    let a = upload(&dev, &rng(902).normal_vec(8, 1.0));
    let short = upload(&dev, &rng(903).normal_vec(7, 1.0));
    let y = poisoned(&dev, 8, f32::NAN);
    let err = swiglu(&dev, &a, &short, &y, 8).unwrap_err();
    assert!(
        err.to_string().contains("up has 7 elements, needs 8"),
        "{err}"
    );
    assert_eq!(dev.launch_count(), 0);
}
