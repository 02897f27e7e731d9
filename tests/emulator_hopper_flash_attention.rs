//! Flash attention (`gpu_kernels::flash_attention`, built on the emulator's TMA, `mbarrier` and
//! `wgmma` model) on the emulator, head_dim 64 and 128: causal GQA against a float64
//! reference, and batch invariance (a query computed alone is bit-identical to the same query
//! in a batch). Key ranges run long enough to refill every slot of the pipeline's ring, so a
//! correct pipeline is shown not to be reported as a race.
//!
//! Everything launches at the emulator level (`emu::launch`), with tensor maps encoded by
//! `TensorMap::emulated_2d` over host vectors (`emu_common::hopper`).
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod common;
mod emu_common;

use common::{bf16_to_f32 as bf16_f32, rel_l2, rng};
use emu_common::hopper::{Bf16Tensor, cfg, random_bf16};
use gpu_kernels::device::emu;
use gpu_kernels::device::{In, Out};
use gpu_kernels::flash_attention;

/// A causal GQA problem: `n` queries at `start..start + n` over a bf16 KV cache of `cap`
/// positions (a multiple of 128, zero past `start + n`); V stored transposed; head_dim `hd`
/// (64 or 128).
struct Attention {
    hd: usize,
    n: usize,
    start: usize,
    n_head: usize,
    n_kv: usize,
    cap: usize,
    q: Bf16Tensor,
    k: Bf16Tensor,
    vt: Bf16Tensor,
    q_vals: Vec<f64>,
    k_vals: Vec<f64>,
    vt_vals: Vec<f64>,
}

impl Attention {
    fn new(hd: usize, salt: u64, n: usize, start: usize, n_head: usize, n_kv: usize) -> Self {
        #[allow(non_snake_case)]
        let HD = hd;
        let mut r = rng(salt * 1000 + hd as u64);
        let cap = (start + n).next_multiple_of(128);
        let (q, q_vals) = random_bf16(&mut r, n * n_head * HD, 1.0);
        let (mut k, mut k_vals) = random_bf16(&mut r, cap * n_kv * HD, 1.0);
        let (mut vt, mut vt_vals) = random_bf16(&mut r, n_kv * HD * cap, 1.0);
        let len = start + n;
        k[len * n_kv * HD..].fill(0);
        k_vals[len * n_kv * HD..].fill(0.0);
        for row in 0..n_kv * HD {
            vt[row * cap + len..(row + 1) * cap].fill(0);
            vt_vals[row * cap + len..(row + 1) * cap].fill(0.0);
        }
        Attention {
            hd,
            n,
            start,
            n_head,
            n_kv,
            cap,
            q: Bf16Tensor::new(&q),
            k: Bf16Tensor::new(&k),
            vt: Bf16Tensor::new(&vt),
            q_vals,
            k_vals,
            vt_vals,
        }
    }

    /// Runs the kernel for queries `from..from + n` (positions `start + from..`); bf16 out.
    fn run(&self, from: usize, n: usize) -> Vec<u16> {
        let hd = self.hd;
        let width = self.n_head * hd;
        let box_ = |t: &Bf16Tensor, from: usize, cols: usize, rows: usize, box_rows: usize| {
            t.map(
                from,
                cols as u64,
                rows as u64,
                flash_attention::BOX_INNER,
                box_rows as u32,
            )
        };
        let outer = flash_attention::BOX_OUTER as usize;
        // V is read in boxes of 64 keys × one KV head's `hd` rows.
        let maps = [
            box_(&self.q, from * width, width, n, outer),
            box_(&self.k, 0, self.n_kv * hd, self.cap, outer),
            box_(&self.vt, 0, self.cap, self.n_kv * hd, hd),
        ];
        let mut o = vec![0xffffu16; n * width];
        let (mq, mk, mv, oo) = (
            In::from_slice(&maps[..1]),
            In::from_slice(&maps[1..2]),
            In::from_slice(&maps[2..]),
            Out::from_slice(&mut o),
        );
        let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        let (start, heads, kvs) = (
            (self.start + from) as u32,
            self.n_head as u32,
            self.n_kv as u32,
        );
        let grid = (heads, n.div_ceil(flash_attention::BLOCK_Q) as u32);
        emu::launch(
            cfg(
                grid,
                flash_attention::THREADS,
                flash_attention::shared_bytes(hd),
            ),
            || {
                if hd == 64 {
                    flash_attention::flash_attention_hd64(
                        mq, mk, mv, oo, n as u32, start, heads, kvs, scale_log2,
                    )
                } else {
                    flash_attention::flash_attention_hd128(
                        mq, mk, mv, oo, n as u32, start, heads, kvs, scale_log2,
                    )
                }
            },
        )
        .unwrap();
        o
    }

    /// Float64 causal attention: query `i` at `start + i` sees keys `0..=start + i`.
    fn reference(&self) -> Vec<f64> {
        #[allow(non_snake_case)]
        let HD = self.hd;
        let width = self.n_head * HD;
        let group = self.n_head / self.n_kv;
        let keys: Vec<Vec<f64>> = (0..self.n_kv * self.cap)
            .map(|i| {
                let (kv, t) = (i / self.cap, i % self.cap);
                self.k_vals[(t * self.n_kv + kv) * HD..][..HD].to_vec()
            })
            .collect();
        let values: Vec<Vec<f64>> = (0..self.n_kv * self.cap)
            .map(|i| {
                let (kv, t) = (i / self.cap, i % self.cap);
                (0..HD)
                    .map(|d| self.vt_vals[(kv * HD + d) * self.cap + t])
                    .collect()
            })
            .collect();
        let mut out = vec![0.0; self.n * width];
        for i in 0..self.n {
            for h in 0..self.n_head {
                let kv = h / group;
                let q = &self.q_vals[i * width + h * HD..][..HD];
                let o = kiln::reference::ops::attend(
                    q,
                    self.start + i + 1,
                    |t| &keys[kv * self.cap + t],
                    |t| &values[kv * self.cap + t],
                    1.0 / (HD as f64).sqrt(),
                );
                out[i * width + h * HD..][..HD].copy_from_slice(&o);
            }
        }
        out
    }
}

#[test]
fn flash_attention_matches_float64_causal_gqa() {
    for (i, (n, start, n_head, n_kv)) in [
        (1, 0, 4, 2),
        (5, 70, 4, 2),
        (130, 0, 2, 2),
        (130, 70, 4, 2),
        // 3 and 6 key blocks through the 3-slot ring: slots refilled in the second.
        (5, 300, 4, 2),
        (1, 700, 2, 1),
    ]
    .into_iter()
    .enumerate()
    {
        for hd in [128, 64] {
            let a = Attention::new(hd, 80 + i as u64, n, start, n_head, n_kv);
            let got = a.run(0, n);
            let err = rel_l2(&bf16_f32(&got), &a.reference());
            assert!(
                err < 1e-2,
                "flash attention hd{hd} n={n} start={start} heads {n_head}/{n_kv}: rel L2 {err:.3e}"
            );
        }
    }
}

#[test]
fn flash_attention_query_alone_is_bit_identical_to_the_same_query_in_a_batch() {
    for hd in [128, 64] {
        let a = Attention::new(hd, 90, 130, 70, 4, 2);
        let all = a.run(0, 130);
        let width = 4 * hd;
        for i in [0, 57, 127, 128, 129] {
            let alone = a.run(i, 1);
            assert_eq!(
                alone,
                all[i * width..(i + 1) * width],
                "hd{hd}: query {i} computed alone differs from the same query in the 130-query call"
            );
        }
    }
}
