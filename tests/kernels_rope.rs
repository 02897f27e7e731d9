//! NEOX RoPE against the float64 reference (`kiln::reference::ops`), including positions up to
//! 120 000 (the sin/cos range reduction) and partial rotation (rot_dims < head_dim).
//!
//! The reference computes its own frequencies in f64 (`ops::rope_inv_freq`), independently of
//! the host's `rope_inv_freq` that feeds the kernel, and keeps only the precision policy of the
//! angle (NOTES: f32 `pos · inv_freq`, inv_freq rounded once from f64, as transformers does);
//! sin/cos and the rotation are f64. Tolerance 2e-6 (observed ~3e-7); a wrong frequency or
//! pairing gives ≥ 1e-2.

mod common;
use common::*;
use kiln::gpu::ops::rope::{self, RopeShape};
use kiln::reference::ops;

const TOKENS: [usize; 4] = [1, 5, 33, 257];
const TOL: f64 = 2e-6;
const BASE: f64 = 1e6;

fn reference(x: &[f32], pos: &[u32], s: RopeShape) -> Vec<f64> {
    let inv_freq = ops::rope_inv_freq(BASE, s.rot_dims);
    let mut y = ops::widen(x);
    for (t, &p) in pos.iter().enumerate() {
        // The kernel's angle: f32 position times f32 frequency, rounded in f32.
        let angles: Vec<f64> = inv_freq
            .iter()
            .map(|f| f64::from(p as f32 * *f as f32))
            .collect();
        for h in 0..s.n_heads {
            ops::rope_neox(
                &mut y[(t * s.n_heads + h) * s.head_dim..][..s.head_dim],
                &angles,
            );
        }
    }
    y
}

#[test]
fn rope_neox_matches_f64_including_large_positions() {
    for dev in devices() {
        for (case, &tokens) in TOKENS.iter().enumerate() {
            for (head_dim, rot_dims) in [(64, 64), (128, 128), (128, 64)] {
                let shape = RopeShape {
                    tokens,
                    n_heads: 3,
                    head_dim,
                    rot_dims,
                };
                let mut r = rng(200 + case as u64 * 10 + rot_dims as u64 + head_dim as u64);
                let x = r.normal_vec(tokens * 3 * head_dim, 1.0);
                // Positions up to 120 000 exercise the sin/cos range reduction.
                let pos: Vec<u32> = (0..tokens).map(|_| r.below(120_000) as u32).collect();
                let xb = upload(&dev, &x);
                let (pb, fb) = (
                    upload(&dev, &pos),
                    upload(&dev, &rope::rope_inv_freq(BASE, rot_dims)),
                );
                rope::rope_neox(&dev, &xb, &pb, &fb, shape).unwrap();
                let got = xb.to_vec().unwrap();
                assert_close(
                    &format!("rope {tokens}x3x{head_dim} rot {rot_dims}"),
                    &dev,
                    &got,
                    &reference(&x, &pos, shape),
                    TOL,
                );
                // Past rot_dims every element passes through untouched, bit for bit.
                for (g, x) in got.chunks(head_dim).zip(x.chunks(head_dim)) {
                    assert_eq!(bits(&g[rot_dims..]), bits(&x[rot_dims..]));
                }
            }
        }
    }
}

#[test]
fn rope_shapes_are_checked_before_launching() {
    let dev = kiln::gpu::Device::emulator();
    let x = upload(&dev, &rng(901).normal_vec(64, 1.0));
    let (p, f) = (upload(&dev, &[3u32]), upload(&dev, &[1.0f32; 32]));
    let shape = |rot_dims| RopeShape {
        tokens: 1,
        n_heads: 1,
        head_dim: 64,
        rot_dims,
    };
    for bad in [0, 63, 66] {
        let err = rope::rope_neox(&dev, &x, &p, &f, shape(bad)).unwrap_err();
        assert!(err.to_string().contains("must be even"), "{err}");
    }
    let two = RopeShape {
        tokens: 2,
        ..shape(64)
    };
    let err = rope::rope_neox(&dev, &x, &p, &f, two).unwrap_err();
    assert!(
        err.to_string().contains("x has 64 elements, needs 128"),
        "{err}"
    );
    assert_eq!(dev.launch_count(), 0);
}
