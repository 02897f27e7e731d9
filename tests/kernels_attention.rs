//! KV append and wave attention against the float64 reference (`kiln::reference::ops::attend`)
//! over the same bf16 cache, and invariance: any wave size, and any chunking of the queries,
//! gives the same bits.
//!
//! Tolerance 2e-6: f32 dot products over head_dim, an f32 softmax (ex2.approx, ~2 ulp) and an
//! f32 weighted sum keep ~1e-6 relative accuracy; a masking or indexing error gives ≥ 1e-2.

mod common;
use common::*;
use kiln::gpu::ops::attention::{self, AttentionShape, KvCache};
use kiln::reference::ops;

const TOL: f64 = 2e-6;

/// Query `t` of the chunk (position `start_pos + t`) attends to cache rows `0..=pos` of its
/// KV head.
fn reference(q: &[f32], kc: &[f64], vc: &[f64], c: &AttentionShape) -> Vec<f64> {
    let (hd, kvw) = (c.head_dim, c.kv_width());
    let group = c.n_head / c.n_kv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut o = Vec::with_capacity(c.n * c.n_head * hd);
    for t in 0..c.n {
        for h in 0..c.n_head {
            let at = h / group * hd;
            let qrow = ops::widen(&q[(t * c.n_head + h) * hd..][..hd]);
            let key = |j: usize| &kc[j * kvw + at..][..hd];
            let value = |j: usize| &vc[j * kvw + at..][..hd];
            o.extend(ops::attend(&qrow, c.start_pos + t + 1, key, value, scale));
        }
    }
    o
}

#[test]
fn kv_append_rounds_to_bf16_at_the_right_rows() {
    for dev in devices() {
        for (i, n) in [1usize, 5, 33, 257].into_iter().enumerate() {
            let shape = AttentionShape {
                n,
                start_pos: 7 * i,
                n_head: 4,
                n_kv: 2,
                head_dim: 128,
            };
            let (kvw, start) = (shape.kv_width(), shape.start_pos);
            let mut r = rng(1 + i as u64);
            let (k, v) = (r.normal_vec(n * kvw, 1.0), r.normal_vec(n * kvw, 1.0));
            let cache = KvCache {
                k: poisoned(&dev, (start + n + 3) * kvw, 0xdeadu16),
                v: poisoned(&dev, (start + n + 3) * kvw, 0xdeadu16),
            };
            let (kd, vd) = (upload(&dev, &k), upload(&dev, &v));
            attention::kv_append(&dev, &kd, &vd, &cache, shape).unwrap();
            let (kb, vb) = (cache.k.to_vec().unwrap(), cache.v.to_vec().unwrap());
            for c in [&kb, &vb] {
                assert!(
                    c[..start * kvw].iter().all(|x| *x == 0xdead),
                    "rows before start untouched"
                );
                assert!(
                    c[(start + n) * kvw..].iter().all(|x| *x == 0xdead),
                    "rows after untouched"
                );
            }
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
        AttentionShape {
            n: 1,
            start_pos: 0,
            n_head: 4,
            n_kv: 2,
            head_dim: 128,
        },
        AttentionShape {
            n: 5,
            start_pos: 0,
            n_head: 2,
            n_kv: 1,
            head_dim: 128,
        },
        AttentionShape {
            n: 33,
            start_pos: 0,
            n_head: 4,
            n_kv: 1,
            head_dim: 64,
        },
        AttentionShape {
            n: 33,
            start_pos: 9,
            n_head: 4,
            n_kv: 2,
            head_dim: 128,
        },
        AttentionShape {
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
            let qd = upload(&dev, &q);
            let cache = KvCache {
                k: upload(&dev, &kb),
                v: upload(&dev, &vb),
            };
            let shape = *c;
            let run = |wave: usize| {
                let scratch = poisoned(&dev, shape.scratch_len(wave.min(c.n)), f32::NAN);
                let o = poisoned(&dev, q.len(), f32::NAN);
                attention::attention(&dev, &qd, &cache, &o, &scratch, shape, wave).unwrap();
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
            attention::attention(&dev, &q1, &cache, &o1, &s1, last, 1).unwrap();
            assert_eq!(
                bits(&o1.to_vec().unwrap()),
                bits(&whole[(c.n - 1) * c.n_head * c.head_dim..]),
                "{case}: chunked"
            );
        }
    }
}
