//! KV append and wave attention against a float64 reference over the same bf16 cache, and
//! invariance: any wave size, and any chunking of the queries, gives the same bits.
//!
//! Tolerance 2e-6: f32 dot products over head_dim, an f32 softmax (ex2.approx, ~2 ulp) and an
//! f32 weighted sum keep ~1e-6 relative accuracy; a masking or indexing error gives ≥ 1e-2.

mod common;
use common::*;
use kiln::gpu::ops::attention::{self, AttentionShape};

const TOL: f64 = 2e-6;

struct Case {
    n: usize,
    start_pos: usize,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
}

fn reference(q: &[f32], kc: &[f64], vc: &[f64], c: &Case) -> Vec<f64> {
    let group = c.n_head / c.n_kv;
    let kvw = c.n_kv * c.head_dim;
    let mut o = vec![0.0; c.n * c.n_head * c.head_dim];
    let scale = 1.0 / (c.head_dim as f64).sqrt();
    for t in 0..c.n {
        let pos = c.start_pos + t;
        for h in 0..c.n_head {
            let g = h / group;
            let qrow = &q[(t * c.n_head + h) * c.head_dim..][..c.head_dim];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    let krow = &kc[j * kvw + g * c.head_dim..][..c.head_dim];
                    qrow.iter()
                        .zip(krow)
                        .map(|(a, b)| *a as f64 * b)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..c.head_dim {
                o[(t * c.n_head + h) * c.head_dim + d] = (0..=pos)
                    .map(|j| e[j] / sum * vc[j * kvw + g * c.head_dim + d])
                    .sum();
            }
        }
    }
    o
}

#[test]
fn kv_append_rounds_to_bf16_at_the_right_rows() {
    for dev in devices() {
        for (i, n) in [1usize, 5, 33, 257].into_iter().enumerate() {
            let (kvw, start) = (256, 7 * i);
            let mut r = rng(1 + i as u64);
            let (k, v) = (r.normal_vec(n * kvw, 1.0), r.normal_vec(n * kvw, 1.0));
            let kc = poisoned(&dev, (start + n + 3) * kvw, 0xdeadu16);
            let vc = poisoned(&dev, (start + n + 3) * kvw, 0xdeadu16);
            attention::kv_append(
                &dev,
                &upload(&dev, &k),
                &upload(&dev, &v),
                &kc,
                &vc,
                start,
                n,
                kvw,
            )
            .unwrap();
            let (kb, vb) = (kc.to_vec().unwrap(), vc.to_vec().unwrap());
            assert!(
                kb[..start * kvw].iter().all(|x| *x == 0xdead),
                "rows before start untouched"
            );
            assert!(
                kb[(start + n) * kvw..].iter().all(|x| *x == 0xdead),
                "rows after untouched"
            );
            assert_eq!(
                kb[start * kvw..(start + n) * kvw],
                bf16_bits_and_values(&k).0[..],
                "K rows, n={n}"
            );
            assert_eq!(
                vb[start * kvw..(start + n) * kvw],
                bf16_bits_and_values(&v).0[..],
                "V rows, n={n}"
            );
        }
    }
}

#[test]
fn wave_attention_matches_f64_and_is_wave_and_chunk_invariant() {
    let cases = [
        Case {
            n: 1,
            start_pos: 0,
            n_head: 4,
            n_kv: 2,
            head_dim: 128,
        },
        Case {
            n: 5,
            start_pos: 0,
            n_head: 2,
            n_kv: 1,
            head_dim: 128,
        },
        Case {
            n: 33,
            start_pos: 0,
            n_head: 4,
            n_kv: 1,
            head_dim: 64,
        },
        Case {
            n: 33,
            start_pos: 9,
            n_head: 4,
            n_kv: 2,
            head_dim: 128,
        },
        Case {
            n: 257,
            start_pos: 0,
            n_head: 2,
            n_kv: 1,
            head_dim: 64,
        },
    ];
    for dev in devices() {
        for (ci, c) in cases.iter().enumerate() {
            let kvw = c.n_kv * c.head_dim;
            let total = c.start_pos + c.n;
            let mut r = rng(100 + ci as u64);
            let q = r.normal_vec(c.n * c.n_head * c.head_dim, 1.0);
            let (kb, kf) = bf16_bits_and_values(&r.normal_vec(total * kvw, 1.0));
            let (vb, vf) = bf16_bits_and_values(&r.normal_vec(total * kvw, 1.0));
            let (qd, kd, vd) = (upload(&dev, &q), upload(&dev, &kb), upload(&dev, &vb));
            let shape = AttentionShape {
                n: c.n,
                start_pos: c.start_pos,
                n_head: c.n_head,
                n_kv: c.n_kv,
                head_dim: c.head_dim,
            };
            let run = |wave: usize| {
                let scratch = poisoned(&dev, shape.scratch_len(wave.min(c.n)), f32::NAN);
                let o = poisoned(&dev, q.len(), f32::NAN);
                attention::attention(&dev, &qd, &kd, &vd, &o, &scratch, shape, wave).unwrap();
                o.to_vec().unwrap()
            };
            let whole = run(c.n);
            let case = format!(
                "attention n={} start={} heads={}/{} hd={}",
                c.n, c.start_pos, c.n_head, c.n_kv, c.head_dim
            );
            assert_close(&case, &dev, &whole, &reference(&q, &kf, &vf, c), TOL);
            // Small budgets give the same bits (waves of 1 query only where the emulator can
            // afford hundreds of them).
            let waves: &[usize] = if c.n <= 33 || dev.is_cuda() {
                &[1, 3]
            } else {
                &[3, 100]
            };
            for &wave in waves {
                assert_eq!(bits(&run(wave)), bits(&whole), "{case}: wave {wave}");
            }
            // The last query as its own chunk (start_pos + n - 1) gives the same bits.
            let last = AttentionShape {
                n: 1,
                start_pos: total - 1,
                ..shape
            };
            let q1 = upload(&dev, &q[(c.n - 1) * c.n_head * c.head_dim..]);
            let o1 = poisoned(&dev, c.n_head * c.head_dim, f32::NAN);
            let s1 = poisoned(&dev, last.scratch_len(1), f32::NAN);
            attention::attention(&dev, &q1, &kd, &vd, &o1, &s1, last, 1).unwrap();
            assert_eq!(
                bits(&o1.to_vec().unwrap()),
                bits(&whole[(c.n - 1) * c.n_head * c.head_dim..]),
                "{case}: chunked"
            );
        }
    }
}
