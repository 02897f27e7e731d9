//! `attention_input` (Qwen3 QK-norm + NEOX RoPE + bf16 stores of Q and of the KV cache, from
//! the fused QKV projection) against the float64 reference (`kiln::reference::ops`), on the
//! emulator (default) or the GPU (`KILN_TEST_DEVICE=cuda|all`).
//!
//! The reference computes its own RoPE frequencies in f64 (`ops::rope_inv_freq`), independently
//! of the host's `rope_inv_freq` that feeds the kernel, and keeps only the precision policy of
//! the angle (NOTES: f32 `pos · inv_freq`, inv_freq rounded once from f64, as transformers
//! does: at position 1e5 an f32 angle is off by up to 4e-3 rad from the f64 one, more than the
//! bf16 tolerance, so the policy must be the reference's too); the norm, sin/cos and the
//! rotation are f64.
//!
//! Tolerances: Q and K are one bf16 rounding of an f32 result, so each element must be within
//! `(2^-8 + 1e-5)·|want| + 1e-5·rms(want)` (`common::assert_bf16_close`: half a bf16 unit, plus
//! the f32 norm and rotation: the angle is reduced to [-π, π] within 2.4e-7 up to 1.2e5 rad,
//! and the GPU's `sin.approx`/`cos.approx` add up to 2^-20.9 ≈ 5e-7 absolute, times
//! |x0| + |x1| ≲ 5·rms; 1e-5 leaves a margin of ~3). A wrong frequency, pairing, norm weight or
//! position moves elements by far more (an f32 angle off by one ulp at 1e5, 8e-3 rad, already
//! by 8e-3·|x|). V is stored unchanged: its bits must be exactly the projection's.
//!
//! The projection is bf16 (what `gemm_wgmma::matmul_bf16` stores): the cases draw f32 values
//! and round them to bf16 once, so the reference starts from exactly the kernel's input.
//!
//! Layouts checked, for head_dim hd = 128 and 64: `q[t][h·hd + d]`; K at cache rows
//! `start_pos + t`; V TRANSPOSED, `v_t[h·hd + d][start_pos + t]`. Every output starts poisoned (bf16 0xFFFF), and every
//! element outside the written rows/columns (q's extra row, cache rows before `start_pos` and
//! from `start_pos + n`) must still be poison afterwards.

mod common;
use common::*;
use kiln::gpu::Device;
use kiln::gpu::ops::attention_input::{self, Projected, QkNorm};
use kiln::gpu::ops::flash_attention::{AttentionShape, KvCache};

const BASE: f64 = 1e6;
const EPS: f32 = 1e-6;
const SLACK: f64 = 1e-5;

struct Case {
    shape: AttentionShape,
    /// bf16 values (exact in f32), uploaded as their bits.
    qkv: Vec<f32>,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    norm: bool,
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn new(
        hd: usize,
        n: usize,
        start_pos: usize,
        n_head: usize,
        n_kv: usize,
        norm: bool,
        salt: u64,
    ) -> Case {
        let mut r = rng(salt * 1000 + hd as u64);
        let shape = AttentionShape {
            n,
            start_pos,
            n_head,
            n_kv,
            head_dim: hd,
        };
        let near_one = |r: &mut kiln::rng::Rng| -> Vec<f32> {
            r.normal_vec(hd, 0.2).iter().map(|v| 1.0 + v).collect()
        };
        Case {
            qkv: bf16_rounded(&r.normal_vec(n * (n_head + 2 * n_kv) * hd, 1.0)),
            q_norm: near_one(&mut r),
            k_norm: near_one(&mut r),
            norm,
            shape,
        }
    }

    fn width(&self) -> usize {
        (self.shape.n_head + 2 * self.shape.n_kv) * self.shape.head_dim
    }

    /// Head `j` (Q heads, then K, then V) of token `t`.
    fn head(&self, t: usize, j: usize) -> &[f32] {
        let hd = self.shape.head_dim;
        &self.qkv[t * self.width() + j * hd..][..hd]
    }

    /// Q or K head `j` of token `t` after QK-norm (when on) and RoPE, in f64.
    fn reference(&self, t: usize, j: usize) -> Vec<f64> {
        let w = if j < self.shape.n_head {
            &self.q_norm
        } else {
            &self.k_norm
        };
        let norm = self.norm.then_some((&w[..], EPS));
        qk_norm_rope_reference(self.head(t, j), norm, self.shape.start_pos + t, BASE)
    }
}

/// A cache for `positions` positions with every element poisoned.
fn poisoned_cache(dev: &Device, positions: usize, n_kv: usize, hd: usize) -> KvCache {
    let cap = KvCache::new(dev, positions, n_kv, hd).unwrap().capacity();
    KvCache::from_parts(
        dev,
        poisoned_tma(dev, cap, n_kv * hd),
        poisoned_tma(dev, n_kv * hd, cap),
        hd,
    )
    .unwrap()
}

/// Runs the kernel for `c` and checks everything it must and must not write.
fn run_and_check(dev: &Device, c: &Case, extra_positions: usize) {
    let AttentionShape {
        n,
        start_pos,
        n_head,
        n_kv,
        head_dim: hd,
    } = c.shape;
    let name = format!(
        "attention_input hd{hd} n={n} start={start_pos} heads={n_head}/{n_kv} norm={}",
        c.norm
    );
    let cache = poisoned_cache(dev, start_pos + n + extra_positions, n_kv, hd);
    let cap = cache.capacity();
    let q = poisoned_tma(dev, n + 1, n_head * hd);
    let (qkv, inv_freq) = (
        upload(dev, &bf16_bits(&c.qkv)),
        upload(dev, &attention_input::rope_inv_freq(BASE, hd)),
    );
    let (qn, kn) = (upload(dev, &c.q_norm), upload(dev, &c.k_norm));
    let input = Projected {
        qkv: &qkv,
        inv_freq: &inv_freq,
        norm: c.norm.then_some(QkNorm {
            q: &qn,
            k: &kn,
            eps: EPS,
        }),
    };
    attention_input::attention_input(dev, input, &q, &cache, c.shape).unwrap();

    // Q: rows 0..n, then one row that must stay poisoned.
    let got_q = q.data().to_vec().unwrap();
    let want_q: Vec<f64> = (0..n)
        .flat_map(|t| (0..n_head).flat_map(move |j| c.reference(t, j)))
        .collect();
    let q_len = n * n_head * hd;
    assert_bf16_close(&format!("{name}: q"), dev, &got_q[..q_len], &want_q, SLACK);
    assert!(
        got_q[q_len..].iter().all(|b| *b == BF16_POISON),
        "{name}: q written past row {n}"
    );

    // K: cache rows start_pos.., poison elsewhere.
    let kw = n_kv * hd;
    let got_k = cache.k.data().to_vec().unwrap();
    let rows = start_pos * kw..(start_pos + n) * kw;
    let want_k: Vec<f64> = (0..n)
        .flat_map(|t| (0..n_kv).flat_map(move |h| c.reference(t, n_head + h)))
        .collect();
    assert_bf16_close(
        &format!("{name}: K cache"),
        dev,
        &got_k[rows.clone()],
        &want_k,
        SLACK,
    );
    let outside = |i: usize| !rows.contains(&i);
    let stray = (0..got_k.len()).find(|&i| outside(i) && got_k[i] != BF16_POISON);
    assert_eq!(
        stray, None,
        "{name}: K cache element written outside the rows"
    );

    // V: transposed, exactly bf16(v), poison elsewhere.
    let got_v = cache.v_t.data().to_vec().unwrap();
    let mut want_v = vec![BF16_POISON; kw * cap];
    for t in 0..n {
        for h in 0..n_kv {
            let v = bf16_bits(c.head(t, n_head + n_kv + h));
            for (d, b) in v.into_iter().enumerate() {
                want_v[(h * hd + d) * cap + start_pos + t] = b;
            }
        }
    }
    if let Some(i) = (0..got_v.len()).find(|&i| got_v[i] != want_v[i]) {
        panic!(
            "{name} on {}: v_t[{}][{}] is {:#06x}, expected {:#06x} (seed {})",
            dev.name(),
            i / cap,
            i % cap,
            got_v[i],
            want_v[i],
            seed()
        );
    }
}

#[test]
fn attention_input_norms_rotates_and_fills_the_cache() {
    for dev in devices() {
        let mut salt = 0;
        for n in [1, 5, 33] {
            for start_pos in [0, 200] {
                for (n_head, n_kv) in [(2, 2), (4, 2), (8, 1)] {
                    for norm in [true, false] {
                        salt += 1;
                        for hd in [128, 64] {
                            let c = Case::new(hd, n, start_pos, n_head, n_kv, norm, salt);
                            run_and_check(&dev, &c, 7);
                        }
                    }
                }
            }
        }
    }
}

/// Positions near 1e5 (angles up to 1e5 rad: the sin/cos range reduction), in a cache that ends
/// right after the chunk (the last rows and columns of both cache layouts).
#[test]
fn attention_input_at_large_positions() {
    for dev in devices() {
        for (i, norm) in [true, false].into_iter().enumerate() {
            let (n, start_pos) = (33, 99_967); // positions 99 967..=99 999; capacity 100 096
            for hd in [128, 64] {
                let c = Case::new(hd, n, start_pos, 4, 1, norm, 100 + i as u64);
                run_and_check(&dev, &c, 96);
            }
        }
    }
}

#[test]
fn attention_input_shapes_are_checked_before_launching() {
    const HD: usize = 128;
    let dev = Device::emulator();
    let cache = KvCache::new(&dev, 100, 2, HD).unwrap(); // capacity 128
    let shape = AttentionShape {
        n: 3,
        start_pos: 0,
        n_head: 4,
        n_kv: 2,
        head_dim: HD,
    };
    let qkv = upload(&dev, &bf16_bits(&rng(7).normal_vec(3 * 8 * HD, 1.0)));
    let inv_freq = upload(&dev, &attention_input::rope_inv_freq(BASE, HD));
    let q = poisoned_tma(&dev, 3, 4 * HD);
    let err = |s: AttentionShape, qkv: &kiln::gpu::Buffer<u16>, q: &kiln::gpu::TmaMatrix| {
        let input = Projected {
            qkv,
            inv_freq: &inv_freq,
            norm: None,
        };
        attention_input::attention_input(&dev, input, q, &cache, s)
            .unwrap_err()
            .to_string()
    };
    let e = err(
        AttentionShape {
            head_dim: 64,
            ..shape
        },
        &qkv,
        &q,
    );
    assert!(
        e.contains("head_dim 64, but the KV cache is for head_dim 128"),
        "{e}"
    );
    let e = err(
        AttentionShape {
            head_dim: 96,
            ..shape
        },
        &qkv,
        &q,
    );
    assert!(
        e.contains("head_dim 96: the flash attention kernels take head_dim 64 or 128 only"),
        "{e}"
    );
    let e = err(AttentionShape { n_kv: 3, ..shape }, &qkv, &q);
    assert!(e.contains("not a multiple of 3 KV heads"), "{e}");
    let e = err(
        AttentionShape {
            start_pos: 126,
            ..shape
        },
        &qkv,
        &q,
    );
    assert!(
        e.contains("positions 126..129 exceed the cache's 128"),
        "{e}"
    );
    let short = upload(&dev, &[0x3f00u16; 100]);
    let e = err(shape, &short, &q);
    assert!(e.contains("qkv has 100 elements"), "{e}");
    let e = err(shape, &qkv, &poisoned_tma(&dev, 2, 4 * HD));
    assert!(e.contains("q is 2 × 512"), "{e}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
