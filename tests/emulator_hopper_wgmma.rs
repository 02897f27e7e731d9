//! The emulator's Hopper model (`gpu_kernels::device::emu::hopper`), `wgmma`: every shape with
//! A from shared memory or registers against float64, through the accumulator and register-A
//! fragment layouts of the PTX ISA written out independently here; misuse (descriptors that
//! differ across the warpgroup, an unmodelled swizzle, a partial warpgroup, a missing fence,
//! commit or wait, an operand outside shared memory), and the races between copies and
//! `wgmma`s that a pipeline's barriers fail to order, found by happens-before rather than by
//! luck of scheduling; each with the emulator's exact message, which names the block and, where
//! one is to blame, the thread.
//!
//! Everything launches at the emulator level (`emu::launch`), with tensor maps encoded by
//! `TensorMap::emulated_2d` over host vectors (`emu_common::hopper`).
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod common;
mod emu_common;

use common::{rel_l2, rng};
use emu_common::expect_err;
use emu_common::hopper::{Bf16Tensor, cfg, random_bf16};
use gpu_kernels::device::async_copy::{Mbarrier, TensorMap, tma_load_2d};
use gpu_kernels::device::emu;
use gpu_kernels::device::tensor_core::{
    Accumulators, WgmmaDesc, wgmma_commit, wgmma_fence, wgmma_m64n64k16_rs, wgmma_m64n64k16_ss,
    wgmma_m64n128k16_rs, wgmma_m64n128k16_ss, wgmma_m64n256k16_rs, wgmma_m64n256k16_ss, wgmma_wait,
};
use gpu_kernels::device::{In, Out, sync_threads, thread_idx};
use gpu_kernels::probe;

/// Where accumulator `i` of warpgroup thread `t` sits in the 64 × N tile (PTX ISA, "Matrix
/// fragments for wgmma.mma_async", m64nNk16 D): (row, column).
fn fragment_position(t: usize, i: usize) -> (usize, usize) {
    let (w, l, j, e) = (t / 32, t % 32, i / 4, i % 4);
    (16 * w + l / 4 + 8 * (e / 2), 8 * j + 2 * (l % 4) + e % 2)
}

/// A (64 × 64) and B (`n` × 64, like `w[n][k]`) with their exact values, and the maps.
struct Operands {
    a: Bf16Tensor,
    b: Bf16Tensor,
    a_vals: Vec<f64>,
    b_vals: Vec<f64>,
    n: usize,
}

impl Operands {
    fn new(salt: u64, n: usize) -> Self {
        let mut r = rng(salt);
        let (a, a_vals) = random_bf16(&mut r, 64 * 64, 1.0);
        let (b, b_vals) = random_bf16(&mut r, n * 64, 1.0);
        Operands {
            a: Bf16Tensor::new(&a),
            b: Bf16Tensor::new(&b),
            a_vals,
            b_vals,
            n,
        }
    }
    fn maps(&self) -> [TensorMap; 2] {
        [
            self.a.map(0, 64, 64, 64, 64),
            self.b.map(0, 64, self.n as u64, 64, self.n as u32),
        ]
    }
    /// `C + A·Bᵀ` in f64, row-major 64 × n.
    fn reference(&self, c: &[f64]) -> Vec<f64> {
        let mut d = c.to_vec();
        for i in 0..64 {
            for j in 0..self.n {
                d[i * self.n + j] += (0..64)
                    .map(|k| self.a_vals[i * 64 + k] * self.b_vals[j * 64 + k])
                    .sum::<f64>();
            }
        }
        d
    }
    /// The register-A fragments of every thread for the four k16 steps, `[kk][t][4]` (PTX ISA,
    /// wgmma register A for `.bf16`: the `mma.m16n8k16` A fragment of the warp's 16 rows).
    fn a_fragments(&self) -> Vec<u32> {
        let a = self.a.bits();
        let pair = |i: usize, k: usize| a[i * 64 + k] as u32 | (a[i * 64 + k + 1] as u32) << 16;
        let mut out = Vec::with_capacity(4 * 128 * 4);
        for kk in 0..4 {
            for t in 0..128 {
                let (w, l) = (t / 32, t % 32);
                let (g, q) = (16 * w + l / 4, 16 * kk + 2 * (l % 4));
                out.extend([
                    pair(g, q),
                    pair(g + 8, q),
                    pair(g, q + 8),
                    pair(g + 8, q + 8),
                ]);
            }
        }
        out
    }
}

/// How a test kernel issues one k16 step for a 64 × N tile (`L = N / 2` accumulators).
#[derive(Clone, Copy)]
enum Step<const L: usize> {
    Ss(fn(&mut [f32; L], WgmmaDesc, WgmmaDesc)),
    Rs(fn(&mut [f32; L], [u32; 4], WgmmaDesc)),
}

/// One warpgroup: A and B by TMA, accumulators from `c[t][L]`, four k16 steps over K = 64,
/// then `out[t][L]`.
fn wgmma_kernel<const L: usize>(
    maps: In<TensorMap>,
    a_frags: In<u32>,
    c: In<f32>,
    out: Out<f32>,
    step: Step<L>,
) {
    let (a_tile, b_tile, bar) = (0, 8192, Mbarrier(8192 + 32768));
    let t = thread_idx().x as usize;
    if t == 0 {
        bar.init(1);
        bar.arrive_expect_tx((8192 + L * 256) as u32);
        tma_load_2d(a_tile, maps, 0, 0, bar);
        tma_load_2d(b_tile, maps.offset(1), 0, 0, bar);
    }
    sync_threads();
    bar.wait(0);
    let mut acc = [0.0f32; L];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = c.at(t * L + i);
    }
    let a = WgmmaDesc::k_major_swizzle_128b(a_tile);
    let b = WgmmaDesc::k_major_swizzle_128b(b_tile);
    wgmma_fence();
    for kk in 0..4u32 {
        match step {
            Step::Ss(f) => f(&mut acc, a.advance(32 * kk), b.advance(32 * kk)),
            Step::Rs(f) => {
                let at = (kk as usize * 128 + t) * 4;
                let regs = [
                    a_frags.at(at),
                    a_frags.at(at + 1),
                    a_frags.at(at + 2),
                    a_frags.at(at + 3),
                ];
                f(&mut acc, regs, b.advance(32 * kk))
            }
        }
    }
    wgmma_commit();
    wgmma_wait::<0>();
    for (i, v) in acc.iter().enumerate() {
        out.set(t * L + i, *v);
    }
}

/// Runs `step` on fresh operands with accumulators `C` and checks `C + A·Bᵀ` and the layout.
fn check_wgmma<const L: usize>(salt: u64, step: Step<L>, label: &str) {
    let n = 2 * L;
    let ops = Operands::new(salt, n);
    let maps = ops.maps();
    let frags = ops.a_fragments();
    let mut r = rng(salt + 100);
    let c: Vec<f32> = r.normal_vec(128 * L, 1.0);
    let mut out = vec![f32::NAN; 128 * L];
    // C and the result as 64 × n tiles, through the fragment layout.
    let mut c_tile = vec![f64::NAN; 64 * n];
    for t in 0..128 {
        for i in 0..L {
            let (row, col) = fragment_position(t, i);
            assert!(c_tile[row * n + col].is_nan(), "fragment layout overlaps");
            c_tile[row * n + col] = c[t * L + i] as f64;
        }
    }
    let (m, f, ci, o) = (
        In::from_slice(&maps),
        In::from_slice(&frags),
        In::from_slice(&c),
        Out::from_slice(&mut out),
    );
    emu::launch(cfg((1, 1), 128, 8192 + 32768 + 64), || {
        wgmma_kernel(m, f, ci, o, step)
    })
    .unwrap();
    let want = ops.reference(&c_tile);
    let mut got = vec![f32::NAN; 64 * n];
    for t in 0..128 {
        for i in 0..L {
            let (row, col) = fragment_position(t, i);
            got[row * n + col] = out[t * L + i];
        }
    }
    let err = rel_l2(&got, &want);
    assert!(err < 1e-6, "{label}: rel L2 {err:.3e}");
}

#[test]
fn wgmma_every_shape_and_a_source_matches_float64() {
    check_wgmma::<32>(10, Step::Ss(wgmma_m64n64k16_ss), "m64n64k16 SS");
    check_wgmma::<64>(11, Step::Ss(wgmma_m64n128k16_ss), "m64n128k16 SS");
    check_wgmma::<128>(12, Step::Ss(wgmma_m64n256k16_ss), "m64n256k16 SS");
    check_wgmma::<32>(13, Step::Rs(wgmma_m64n64k16_rs), "m64n64k16 RS");
    check_wgmma::<64>(14, Step::Rs(wgmma_m64n128k16_rs), "m64n128k16 RS");
    check_wgmma::<128>(15, Step::Rs(wgmma_m64n256k16_rs), "m64n256k16 RS");
}

#[test]
fn probe_wgmma_matches_float64() {
    // probe_wgmma: A 64 × 64 (box 64 × 64), B 128 × 64 (box 64 × 128), acc from zero.
    let ops = Operands::new(20, 128);
    let maps = ops.maps();
    let mut out = vec![f32::NAN; 128 * 64];
    let (ma, mb, o) = (
        In::from_slice(&maps[..1]),
        In::from_slice(&maps[1..]),
        Out::from_slice(&mut out),
    );
    emu::launch(cfg((1, 1), 128, probe::PROBE_SHARED_BYTES), || {
        probe::probe_wgmma(ma, mb, o)
    })
    .unwrap();
    let want = ops.reference(&vec![0.0; 64 * 128]);
    let mut got = vec![f32::NAN; 64 * 128];
    for t in 0..128 {
        for i in 0..64 {
            let (row, col) = fragment_position(t, i);
            got[row * 128 + col] = out[t * 64 + i];
        }
    }
    let err = rel_l2(&got, &want);
    assert!(err < 1e-6, "probe_wgmma: rel L2 {err:.3e}");
}

/// A 64 × 128 SS step with one thing wrong, by case.
fn wgmma_misuse(maps: In<TensorMap>, case: u32) {
    let (a_tile, b_tile, bar) = (0, 8192, Mbarrier(8192 + 16384));
    let t = thread_idx().x;
    if t == 0 {
        bar.init(1);
        bar.arrive_expect_tx(8192 + 16384);
        tma_load_2d(a_tile, maps, 0, 0, bar);
        tma_load_2d(b_tile, maps.offset(1), 0, 0, bar);
    }
    sync_threads();
    match case {
        // Nobody waits for the copies: the block barrier orders their issue, not their landing.
        7 => {}
        // Only thread 0 waits, then a block barrier hands what it saw to everyone: correct.
        9 => {
            if t == 0 {
                bar.wait(0);
            }
            sync_threads();
        }
        _ => bar.wait(0),
    }
    let mut acc = [0.0f32; 64];
    acc.keep_in_registers();
    let a = WgmmaDesc::k_major_swizzle_128b(a_tile);
    let mut b = WgmmaDesc::k_major_swizzle_128b(b_tile);
    match case {
        // Warp 1 steps its B descriptor on by one k16 step.
        0 if t / 32 == 1 => b = b.advance(32),
        // Warps 2 and 3 leave before the product.
        2 if t >= 64 => return,
        _ => {}
    }
    let a = match case {
        // No swizzle (mode 0): a layout the emulator does not model.
        1 => WgmmaDesc(a.0 & !(3 << 62)),
        // A tile starting past the end of shared memory.
        6 => WgmmaDesc::k_major_swizzle_128b(64 * 1024),
        _ => a,
    };
    if case != 3 {
        wgmma_fence();
    }
    wgmma_m64n128k16_ss(&mut acc, a, b);
    if case == 5 {
        wgmma_wait::<0>();
    }
    // Thread 0 reloads B while the product may still be reading it (before the wait).
    if case == 8 && t == 0 {
        wgmma_commit();
        bar.arrive_expect_tx(16384);
        tma_load_2d(b_tile, maps.offset(1), 0, 0, bar);
    }
    if case != 4 {
        wgmma_commit();
        wgmma_wait::<0>();
    }
}

#[test]
fn wgmma_misuse_is_reported() {
    let ops = Operands::new(30, 128);
    let maps = ops.maps();
    let m = In::from_slice(&maps);
    let run = |case: u32, threads: u32| {
        expect_err(emu::launch(cfg((1, 1), threads, 8192 + 16384 + 64), || {
            wgmma_misuse(m, case)
        }))
    };
    let what = "wgmma.mma_async.m64n128k16 (A, B in shared memory)";
    // Scheduling is deterministic, so is the thread that reports: in block 0, thread 127
    // passes the block barrier last and runs on to the wgmma first; then threads 0..=126
    // arrive, and 126, the last, computes the product for all (and checks the operands).
    assert_eq!(
        run(0, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what}: the warpgroup's threads pass different \
             descriptors (A, B: thread 0 0x4000004000010000, 0x4000004000010200; thread 32 \
             0x4000004000010000, 0x4000004000010202); all 128 must pass the same"
        )
    );
    assert_eq!(
        run(1, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what}: descriptor A 0x0000004000010000 has \
             swizzle mode 0 (no swizzle); the emulator models only the K-major 128-byte \
             swizzle (mode 1, what WgmmaDesc::k_major_swizzle_128b builds)"
        )
    );
    assert_eq!(
        run(2, 128),
        format!(
            "block (0, 0, 0) thread (0, 0, 0): {what} issued by 64 of the warpgroup's 128 \
             threads (thread 64 of the warpgroup has exited): all 4 warps issue it together"
        )
    );
    // A block of 64 threads has no whole warpgroup (the probe, launched too small).
    let mut out = vec![0.0f32; 128 * 64];
    let (ma, mb, o) = (
        In::from_slice(&maps[..1]),
        In::from_slice(&maps[1..]),
        Out::from_slice(&mut out),
    );
    let msg = expect_err(emu::launch(
        cfg((1, 1), 64, probe::PROBE_SHARED_BYTES),
        || probe::probe_wgmma(ma, mb, o),
    ));
    assert_eq!(
        msg,
        format!(
            "block (0, 0, 0) thread (63, 0, 0): {what} needs a whole warpgroup (4 warps, 128 \
             threads); this one has 64 threads (a block of 64 threads)"
        )
    );
    assert_eq!(
        run(3, 128),
        format!(
            "block (0, 0, 0) thread (127, 0, 0): {what} without a wgmma.fence before it: the first \
             wgmma of a thread, and the first after a wgmma.wait_group, must follow a wgmma.fence"
        )
    );
    assert_eq!(
        run(4, 128),
        "block (0, 0, 0): thread (0, 0, 0) exited with wgmma work not waited for (1 wgmma not \
         committed, 0 committed groups not waited for): end with wgmma.commit_group and \
         wgmma.wait_group 0"
    );
    assert_eq!(
        run(5, 128),
        "block (0, 0, 0) thread (126, 0, 0): wgmma.wait_group 0 with 1 wgmma not committed: \
         wait_group covers committed groups only (wgmma.commit_group first)"
    );
    // Races between copies and products, found by happens-before, not by luck of scheduling.
    assert_eq!(
        run(7, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what} reads shared memory at 0x0, which \
             cp.async.bulk.tensor.2d fills on the mbarrier at 0x6000 in phase 0, but no thread \
             of the warpgroup (threads 0..=127) has waited for that phase to complete"
        )
    );
    assert_eq!(
        run(8, 128),
        format!(
            "block (0, 0, 0) thread (0, 0, 0): cp.async.bulk.tensor.2d into shared [0x2000, \
             0x6000) overwrites bytes at 0x2000 that a {what} of warpgroup 0 (threads 0..=127) \
             may still be reading: no thread of that warpgroup retired it (wgmma.wait_group) and \
             then released the buffer to this thread (mbarrier arrive → wait, or sync_threads) \
             before the copy was issued"
        )
    );
    emu::launch(cfg((1, 1), 128, 8192 + 16384 + 64), || wgmma_misuse(m, 9)).unwrap();
    assert_eq!(
        run(6, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what}: operand A (descriptor \
             0x4000004000011000) row 0, k 0..8: shared address 0x10000 is outside the block's \
             shared memory"
        )
    );
}
