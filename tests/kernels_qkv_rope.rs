//! The Q|K|V projection with QK-norm + NEOX RoPE + KV append in its epilogue
//! (`attention_input::project_attention_input`, kernel `gemm_wgmma_qkv_rope`, head_dim 128)
//! against a float64 reference (projection → bf16 rounding → QK-norm → RoPE), against the
//! two-kernel path (`gemm_wgmma::matmul_bf16` then `attention_input`), and its batch
//! invariance. Emulator by default, the GPU with `KILN_TEST_DEVICE=cuda|all`.
//!
//! The rounding of the projection to bf16 sits between the GEMM and the norm, so the reference
//! must round the same value the kernel rounds: x and w are drawn on coarse grids (x a multiple
//! of 1/8 within ±4, w of 1/64 within ±1/2, the bias of 1/512 within ±2), so every product and
//! every partial sum is a multiple of 2^-9 below 2^10 in magnitude: exact in f32 in any order,
//! so the f32 accumulator (and the bias add) is the exact value and its bf16 rounding is the
//! reference's. From there the tolerances are `kernels_attention_input`'s (one bf16 rounding
//! of an f32 result: `(2^-8 + 1e-5)·|want| + 1e-5·rms(want)`; the f32 sum of squares here adds
//! in another order, well inside that), and V must be exactly the rounded projection's bits.
//!
//! Without QK-norm the fused kernel does the two-kernel path's arithmetic operation for
//! operation, so Q, K and V must be bit-identical to it; with QK-norm V must be, and Q and K
//! within the tolerance (only the sum of squares' order differs).
//!
//! Head counts (q/kv) 4/2 (tiles hold two heads of one kind), 3/1 (a tile of Q and K heads,
//! and a last tile whose upper half is past the last head), 6/3 (K and V in one tile). Rows 1,
//! 7, 130, 300 (partial row tiles, a second and third row tile), `start_pos` > 0, with and
//! without bias and QK-norm. Outputs start poisoned (bf16 0xFFFF); q's extra row and every
//! cache position outside `start_pos..start_pos + n` must stay poisoned.

mod common;
use common::*;
use kiln::gpu::ops::attention_input::{self, Projected, Projection, QkNorm};
use kiln::gpu::ops::flash_attention::{AttentionShape, KvCache};
use kiln::gpu::ops::gemm::Epilogue;
use kiln::gpu::ops::gemm_wgmma;
use kiln::gpu::{Buffer, Device, TmaMatrix};

const HD: usize = 128;
const BASE: f64 = 1e6;
const EPS: f32 = 1e-6;
const SLACK: f64 = 1e-5;

/// `n` normal values of deviation `std` on the grid `step`, clamped to `±max` (exact in bf16
/// and f32: at most 8 significant bits here).
fn grid(r: &mut kiln::rng::Rng, n: usize, std: f64, step: f64, max: f64) -> Vec<f32> {
    r.normal_vec(n, std)
        .iter()
        .map(|v| ((f64::from(*v) / step).round() * step).clamp(-max, max) as f32)
        .collect()
}

struct Case {
    shape: AttentionShape,
    /// Hidden size (K of the GEMM).
    k: usize,
    /// `[n][k]`, `[(n_head + 2·n_kv)·128][k]`, `[(n_head + 2·n_kv)·128]`.
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    with_bias: bool,
    with_norm: bool,
}

impl Case {
    fn new(
        n: usize,
        start_pos: usize,
        (n_head, n_kv): (usize, usize),
        k: usize,
        with_bias: bool,
        with_norm: bool,
        salt: u64,
    ) -> Case {
        let mut r = rng(salt);
        let m = (n_head + 2 * n_kv) * HD;
        let near_one = |r: &mut kiln::rng::Rng| -> Vec<f32> {
            r.normal_vec(HD, 0.2).iter().map(|v| 1.0 + v).collect()
        };
        Case {
            shape: AttentionShape {
                n,
                start_pos,
                n_head,
                n_kv,
                head_dim: HD,
            },
            k,
            x: grid(&mut r, n * k, 1.0, 1.0 / 8.0, 4.0),
            w: grid(&mut r, m * k, 1.0 / (k as f64).sqrt(), 1.0 / 64.0, 0.5),
            bias: grid(&mut r, m, 0.5, 1.0 / 512.0, 2.0),
            q_norm: near_one(&mut r),
            k_norm: near_one(&mut r),
            with_bias,
            with_norm,
        }
    }

    fn name(&self) -> String {
        let s = &self.shape;
        format!(
            "qkv_rope n={} start={} heads={}/{} k={} bias={} norm={}",
            s.n, s.start_pos, s.n_head, s.n_kv, self.k, self.with_bias, self.with_norm
        )
    }

    fn m(&self) -> usize {
        (self.shape.n_head + 2 * self.shape.n_kv) * HD
    }

    /// Head `j` (Q heads, then K, then V) of token `t`: the exact projection (+ bias), rounded
    /// to bf16 (exact in f32 by the grids, so this is the kernel's rounding).
    fn projected(&self, t: usize, j: usize) -> Vec<f32> {
        let k = self.k;
        let x = &self.x[t * k..][..k];
        (j * HD..(j + 1) * HD)
            .map(|c| {
                let w = &self.w[c * k..][..k];
                let mut v: f64 = x.iter().zip(w).map(|(a, b)| f64::from(a * b)).sum();
                if self.with_bias {
                    v += f64::from(self.bias[c]);
                }
                assert_eq!(
                    v,
                    f64::from(v as f32),
                    "the grids keep the projection exact"
                );
                half::bf16::from_f64(v).to_f32()
            })
            .collect()
    }

    /// Q or K head `j` of token `t` after QK-norm (when on) and RoPE, in f64 (the angle's
    /// precision policy as the kernel's: f32 position times f32 frequency).
    fn reference(&self, t: usize, j: usize) -> Vec<f64> {
        let w = if j < self.shape.n_head {
            &self.q_norm
        } else {
            &self.k_norm
        };
        let norm = self.with_norm.then_some((&w[..], EPS));
        qk_norm_rope_reference(&self.projected(t, j), norm, self.shape.start_pos + t, BASE)
    }
}

/// The device side of a case: inputs uploaded and poisoned outputs.
struct Run {
    x: TmaMatrix,
    w: TmaMatrix,
    bias: Buffer<f32>,
    inv_freq: Buffer<f32>,
    q_norm: Buffer<f32>,
    k_norm: Buffer<f32>,
    q: TmaMatrix,
    cache: KvCache,
}

/// Outputs read back: q's `n` rows, and both caches whole.
struct Outputs {
    q: Vec<u16>,
    k: Vec<u16>,
    v_t: Vec<u16>,
}

impl Run {
    /// Rows `first..first + rows` of `c`'s x, run at position `c.shape.start_pos + first`, in
    /// a cache of `capacity` positions.
    fn new(dev: &Device, c: &Case, (first, rows): (usize, usize), capacity: usize) -> Run {
        let (k, s) = (c.k, &c.shape);
        let cap = KvCache::new(dev, capacity, s.n_kv, HD).unwrap().capacity();
        let x = bf16_bits(&c.x[first * k..(first + rows) * k]);
        Run {
            x: tma_upload(dev, &x, rows, k),
            w: tma_upload(dev, &bf16_bits(&c.w), c.m(), k),
            bias: upload(dev, &c.bias),
            inv_freq: upload(dev, &attention_input::rope_inv_freq(BASE, HD)),
            q_norm: upload(dev, &c.q_norm),
            k_norm: upload(dev, &c.k_norm),
            q: poisoned_tma(dev, rows + 1, s.n_head * HD),
            cache: KvCache::from_parts(
                dev,
                poisoned_tma(dev, cap, s.n_kv * HD),
                poisoned_tma(dev, s.n_kv * HD, cap),
                HD,
            )
            .unwrap(),
        }
    }

    fn norm(&self, c: &Case) -> Option<QkNorm<'_>> {
        c.with_norm.then_some(QkNorm {
            q: &self.q_norm,
            k: &self.k_norm,
            eps: EPS,
        })
    }

    fn fused(&self, dev: &Device, c: &Case, shape: AttentionShape) -> Outputs {
        let input = Projection {
            x: &self.x,
            w: &self.w,
            bias: c.with_bias.then_some(&self.bias),
            inv_freq: &self.inv_freq,
            norm: self.norm(c),
        };
        attention_input::project_attention_input(dev, input, &self.q, &self.cache, shape).unwrap();
        self.outputs(c, shape.n)
    }

    /// The two-kernel path: `matmul_bf16` into a bf16 projection, then `attention_input`.
    fn unfused(&self, dev: &Device, c: &Case, shape: AttentionShape) -> Outputs {
        let qkv = poisoned(dev, shape.n * c.m(), BF16_POISON);
        let epilogue = Epilogue::bias(c.with_bias.then_some(&self.bias));
        gemm_wgmma::matmul_bf16(dev, &self.x, &self.w, &qkv, shape.n, epilogue).unwrap();
        let input = Projected {
            qkv: &qkv,
            inv_freq: &self.inv_freq,
            norm: self.norm(c),
        };
        attention_input::attention_input(dev, input, &self.q, &self.cache, shape).unwrap();
        self.outputs(c, shape.n)
    }

    fn outputs(&self, c: &Case, n: usize) -> Outputs {
        let q = self.q.data().to_vec().unwrap();
        let q_len = n * c.shape.n_head * HD;
        assert!(
            q[q_len..].iter().all(|b| *b == BF16_POISON),
            "{}: q written past row {n}",
            c.name()
        );
        Outputs {
            q: q[..q_len].to_vec(),
            k: self.cache.k.data().to_vec().unwrap(),
            v_t: self.cache.v_t.data().to_vec().unwrap(),
        }
    }
}

/// Checks `got` (a whole run of `c`) against the f64 reference, and that nothing outside the
/// chunk's cache positions was written.
fn check_against_reference(dev: &Device, c: &Case, got: &Outputs, cap: usize) {
    let AttentionShape {
        n,
        start_pos,
        n_head,
        n_kv,
        ..
    } = c.shape;
    let name = c.name();
    let want_q: Vec<f64> = (0..n)
        .flat_map(|t| (0..n_head).flat_map(move |j| c.reference(t, j)))
        .collect();
    assert_bf16_close(&format!("{name}: q"), dev, &got.q, &want_q, SLACK);

    let kw = n_kv * HD;
    let rows = start_pos * kw..(start_pos + n) * kw;
    let want_k: Vec<f64> = (0..n)
        .flat_map(|t| (0..n_kv).flat_map(move |h| c.reference(t, n_head + h)))
        .collect();
    assert_bf16_close(
        &format!("{name}: K cache"),
        dev,
        &got.k[rows.clone()],
        &want_k,
        SLACK,
    );
    let stray = (0..got.k.len()).find(|&i| !rows.contains(&i) && got.k[i] != BF16_POISON);
    assert_eq!(stray, None, "{name}: K cache written outside the chunk");

    let mut want_v = vec![BF16_POISON; kw * cap];
    for t in 0..n {
        for h in 0..n_kv {
            let v = bf16_bits(&c.projected(t, n_head + n_kv + h));
            for (d, b) in v.into_iter().enumerate() {
                want_v[(h * HD + d) * cap + start_pos + t] = b;
            }
        }
    }
    assert_same(&got.v_t, &want_v, &format!("{name}: transposed V cache"));
}

const HEADS: [(usize, usize); 3] = [(4, 2), (3, 1), (6, 3)];

#[test]
fn fused_projection_matches_f64_and_the_two_kernel_path() {
    for dev in devices() {
        let mut salt = 0;
        for (i, n) in [1, 7, 130, 300].into_iter().enumerate() {
            for (with_bias, with_norm) in [(true, true), (false, false), (true, false)] {
                salt += 1;
                let heads = HEADS[(i + salt as usize) % HEADS.len()];
                let (start_pos, k) = (37 + 64 * i, [64, 136, 200][salt as usize % 3]);
                let c = Case::new(n, start_pos, heads, k, with_bias, with_norm, salt);
                let capacity = start_pos + n + 50;
                let fused = Run::new(&dev, &c, (0, n), capacity);
                let cap = fused.cache.capacity();
                let got = fused.fused(&dev, &c, c.shape);
                check_against_reference(&dev, &c, &got, cap);

                let two = Run::new(&dev, &c, (0, n), capacity).unfused(&dev, &c, c.shape);
                let name = c.name();
                assert_same(
                    &got.v_t,
                    &two.v_t,
                    &format!("{name}: V, fused vs two kernels"),
                );
                if !with_norm {
                    assert_same(&got.q, &two.q, &format!("{name}: q, fused vs two kernels"));
                    assert_same(&got.k, &two.k, &format!("{name}: K, fused vs two kernels"));
                }
            }
        }
    }
}

/// Positions near 1e5 (angles up to 1e5 rad: the sin/cos range reduction; cache offsets near
/// their largest), in a cache that ends right after the chunk.
#[test]
fn fused_projection_at_large_positions() {
    for dev in devices() {
        for (i, with_norm) in [true, false].into_iter().enumerate() {
            let (n, start_pos) = (33, 99_967); // positions 99 967..=99 999; capacity 100 096
            let c = Case::new(n, start_pos, (3, 1), 72, true, with_norm, 200 + i as u64);
            let run = Run::new(&dev, &c, (0, n), start_pos + n);
            let cap = run.cache.capacity();
            let got = run.fused(&dev, &c, c.shape);
            check_against_reference(&dev, &c, &got, cap);
        }
    }
}

/// A row's outputs (its q row, its K cache row, its V cache column) are bit-identical whether
/// it runs in a call of 300 rows or alone (at the same position), wherever it sat in its
/// 128-row tile and 64-row consumer half.
#[test]
fn fused_projection_is_batch_invariant() {
    let (n, start_pos) = (300, 21);
    for dev in devices() {
        for (salt, heads) in HEADS.into_iter().enumerate() {
            let c = Case::new(n, start_pos, heads, 136, true, true, 100 + salt as u64);
            let capacity = start_pos + n;
            let batch = Run::new(&dev, &c, (0, n), capacity);
            let cap = batch.cache.capacity();
            let all = batch.fused(&dev, &c, c.shape);
            let (qw, kw) = (heads.0 * HD, heads.1 * HD);
            for t in [0, 1, 8, 63, 64, 127, 128, 200, 299] {
                let pos = start_pos + t;
                let one = Run::new(&dev, &c, (t, 1), capacity);
                let shape = AttentionShape {
                    n: 1,
                    start_pos: pos,
                    ..c.shape
                };
                let alone = one.fused(&dev, &c, shape);
                let name = format!("{} row {t}", c.name());
                assert_same(&alone.q, &all.q[t * qw..][..qw], &format!("{name}: q"));
                assert_same(
                    &alone.k[pos * kw..][..kw],
                    &all.k[pos * kw..][..kw],
                    &format!("{name}: K cache row"),
                );
                let column =
                    |v: &[u16]| -> Vec<u16> { (0..kw).map(|d| v[d * cap + pos]).collect() };
                assert_same(
                    &column(&alone.v_t),
                    &column(&all.v_t),
                    &format!("{name}: V cache column"),
                );
            }
        }
    }
}

#[test]
fn fused_projection_shapes_are_checked_before_launching() {
    let dev = Device::emulator();
    let c = Case::new(3, 0, (4, 2), 64, true, true, 7);
    let run = Run::new(&dev, &c, (0, 3), 100);
    let short = upload(&dev, &[0.5f32; 100]);
    let err = |shape: AttentionShape, w: &TmaMatrix, bias: &Buffer<f32>| {
        let input = Projection {
            x: &run.x,
            w,
            bias: Some(bias),
            inv_freq: &run.inv_freq,
            norm: run.norm(&c),
        };
        attention_input::project_attention_input(&dev, input, &run.q, &run.cache, shape)
            .unwrap_err()
            .to_string()
    };
    let e = err(
        AttentionShape {
            head_dim: 64,
            ..c.shape
        },
        &run.w,
        &run.bias,
    );
    assert!(
        e.contains("head_dim 64: the fused projection takes head_dim 128 only"),
        "{e}"
    );
    let e = err(
        AttentionShape {
            n_head: 2,
            ..c.shape
        },
        &run.w,
        &run.bias,
    );
    assert!(e.contains("w has 1024 rows, needs"), "{e}");
    let e = err(c.shape, &run.w, &short);
    assert!(e.contains("bias has 100 elements"), "{e}");
    let e = err(AttentionShape { n: 4, ..c.shape }, &run.w, &run.bias);
    assert!(e.contains("x is 3 × 64"), "{e}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
