//! Self-tests of the CPU emulator (`gpu_kernels::device::emu`), warp collectives: shuffles
//! (xor, down, idx), votes and ballots compute what the hardware does, and `warp_sum_f32`,
//! `warp_max_f32` and `block_sum_f32` match the same butterflies done on the host bit for bit.
//! Shuffles across a partial warp or from exited lanes, and lanes at different collectives, are
//! errors naming the failing thread (on the GPU: garbage or a hang).
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod emu_common;

use emu_common::{expect_err, global_thread, linear, reported_thread};
use gpu_kernels::device::emu;
use gpu_kernels::device::{
    Out, WARP_SIZE, ballot, block_dim, block_idx, block_sum_f32, lane_id, shfl_down_f32,
    shfl_idx_f32, shfl_idx_u32, shfl_xor_f32, shfl_xor_u32, thread_idx, thread_rank, vote_all,
    vote_any, warp_max_f32, warp_max_u32, warp_sum_f32,
};
use gpu_kernels::shared_array;

/// A deterministic, well-spread f32 per (block, thread) in about [-13, 13], of either sign and
/// not exactly representable sums: f32 results depend on the order of additions.
fn value(block: u32, t: u32) -> f32 {
    let h = (block.wrapping_mul(0x9E37_79B9) ^ t.wrapping_mul(0x85EB_CA6B)).rotate_left(13);
    ((h % 2001) as f32 - 1000.0) * 0.013
}

const SHUFFLES: usize = 10;

/// Per thread, `SHUFFLES` results: xor 1/2/4/8/16, down 1/5/31 (f32), idx (f32, u32).
fn warp_exchange_kernel(y: Out<u32>) {
    let t = thread_rank();
    let b = block_idx().x;
    let v = value(b, t);
    let u = v.to_bits() ^ 0xA5A5_0000;
    let lane = lane_id();
    let results = [
        shfl_xor_f32(v, 1).to_bits(),
        shfl_xor_f32(v, 2).to_bits(),
        shfl_xor_u32(u, 4),
        shfl_xor_u32(u, 8),
        shfl_xor_f32(v, 16).to_bits(),
        shfl_down_f32(v, 1).to_bits(),
        shfl_down_f32(v, 5).to_bits(),
        shfl_down_f32(v, 31).to_bits(),
        shfl_idx_f32(v, (lane * 7 + 3) % WARP_SIZE).to_bits(),
        shfl_idx_u32(u, 31 - lane),
    ];
    let base = ((b * block_dim().x + t) as usize) * SHUFFLES;
    for (k, r) in results.into_iter().enumerate() {
        y.set(base + k, r);
    }
}

#[test]
fn warp_shuffles_match_host() {
    let (blocks, n) = (3u32, 128u32);
    let mut y = vec![0u32; (blocks * n) as usize * SHUFFLES];
    let yo = Out::from_slice(&mut y);
    emu::launch(linear(blocks, n), || warp_exchange_kernel(yo)).unwrap();
    for b in 0..blocks {
        for t in 0..n {
            let (warp, lane) = (t / 32 * 32, t % 32);
            let vf = |l: u32| value(b, warp + l).to_bits();
            let vu = |l: u32| vf(l) ^ 0xA5A5_0000;
            let down = |d: u32| {
                if lane + d < 32 {
                    vf(lane + d)
                } else {
                    vf(lane)
                }
            };
            let want = [
                vf(lane ^ 1),
                vf(lane ^ 2),
                vu(lane ^ 4),
                vu(lane ^ 8),
                vf(lane ^ 16),
                down(1),
                down(5),
                down(31),
                vf((lane * 7 + 3) % 32),
                vu(31 - lane),
            ];
            let base = ((b * n + t) as usize) * SHUFFLES;
            assert_eq!(&y[base..base + SHUFFLES], &want, "block {b}, thread {t}");
        }
    }
}

/// Per thread: ballot of a data-dependent predicate, any/all of it, any of false, all of true.
fn vote_kernel(y: Out<u32>) {
    let t = thread_rank();
    let pred = value(block_idx().x, t) > 0.0;
    let base = ((block_idx().x * block_dim().x + t) as usize) * 5;
    y.set(base, ballot(pred));
    y.set(base + 1, vote_any(pred) as u32);
    y.set(base + 2, vote_all(pred) as u32);
    y.set(base + 3, vote_any(false) as u32);
    y.set(base + 4, vote_all(true) as u32);
}

#[test]
fn warp_votes_match_host() {
    let (blocks, n) = (4u32, 96u32);
    let mut y = vec![0u32; (blocks * n * 5) as usize];
    let yo = Out::from_slice(&mut y);
    emu::launch(linear(blocks, n), || vote_kernel(yo)).unwrap();
    let mut saw = [false; 2];
    for b in 0..blocks {
        for w in 0..n / 32 {
            let mask = (0..32u32).fold(0u32, |m, l| {
                m | (((value(b, w * 32 + l) > 0.0) as u32) << l)
            });
            saw[(mask == 0 || mask == u32::MAX) as usize] = true;
            for l in 0..32 {
                let base = ((b * n + w * 32 + l) * 5) as usize;
                let want = [mask, (mask != 0) as u32, (mask == u32::MAX) as u32, 0, 1];
                assert_eq!(&y[base..base + 5], &want, "block {b}, warp {w}, lane {l}");
            }
        }
    }
    assert!(saw[0], "the test data never gave a mixed ballot");
}

/// Per thread: the warp's largest key (`redux.sync.max.u32`), from keys spread over all of
/// u32 (the high bit set in about half).
fn warp_max_u32_kernel(y: Out<u32>) {
    let t = block_idx().x * block_dim().x + thread_rank();
    y.set(
        t as usize,
        warp_max_u32(value(block_idx().x, thread_rank()).to_bits()),
    );
}

#[test]
fn warp_max_u32_is_the_warps_largest() {
    let (blocks, n) = (3u32, 64u32);
    let mut y = vec![0u32; (blocks * n) as usize];
    let yo = Out::from_slice(&mut y);
    emu::launch(linear(blocks, n), || warp_max_u32_kernel(yo)).unwrap();
    for b in 0..blocks {
        for w in 0..n / 32 {
            let want = (0..32)
                .map(|l| value(b, w * 32 + l).to_bits())
                .max()
                .unwrap();
            for l in 0..32 {
                let got = y[(b * n + w * 32 + l) as usize];
                assert_eq!(got, want, "block {b}, warp {w}, lane {l}");
            }
        }
    }
}

/// The xor butterfly of `warp_sum_f32` done on the host: same additions, same order.
fn host_butterfly(lanes: &[f32], op: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    let mut v = lanes.to_vec();
    let mut m = 16;
    while m > 0 {
        v = (0..32).map(|l| op(v[l], v[l ^ m])).collect();
        m >>= 1;
    }
    v
}

fn warp_reduce_kernel(sum: Out<f32>, max: Out<f32>) {
    let i = global_thread();
    let v = value(block_idx().x, thread_idx().x);
    sum.set(i, warp_sum_f32(v));
    max.set(i, warp_max_f32(v));
}

#[test]
fn warp_sum_and_max_match_host_bit_for_bit() {
    let (blocks, n) = (2u32, 256u32);
    let mut sum = vec![f32::NAN; (blocks * n) as usize];
    let mut max = vec![f32::NAN; (blocks * n) as usize];
    let (so, mo) = (Out::from_slice(&mut sum), Out::from_slice(&mut max));
    emu::launch(linear(blocks, n), || warp_reduce_kernel(so, mo)).unwrap();
    for b in 0..blocks {
        for w in 0..n / 32 {
            let lanes: Vec<f32> = (0..32).map(|l| value(b, w * 32 + l)).collect();
            let want_sum = host_butterfly(&lanes, |a, c| a + c);
            let want_max = host_butterfly(&lanes, f32::max);
            let exact: f64 = lanes.iter().map(|v| *v as f64).sum();
            let bound =
                32.0 * f32::EPSILON as f64 * lanes.iter().map(|v| v.abs() as f64).sum::<f64>();
            for l in 0..32usize {
                let i = (b * n + w * 32) as usize + l;
                assert_eq!(
                    sum[i].to_bits(),
                    want_sum[l].to_bits(),
                    "sum, block {b} warp {w}"
                );
                assert_eq!(max[i], lanes.iter().cloned().fold(f32::MIN, f32::max));
                assert_eq!(max[i].to_bits(), want_max[l].to_bits());
                assert!((sum[i] as f64 - exact).abs() <= bound);
            }
            // Every lane of the warp holds the identical value.
            let first = sum[(b * n + w * 32) as usize].to_bits();
            assert!((0..32).all(|l| sum[(b * n + w * 32 + l) as usize].to_bits() == first));
        }
    }
}

shared_array!(fn block_sum_scratch() -> [f32; 32]);

fn block_sum_kernel(y: Out<f32>) {
    let v = value(block_idx().x, thread_idx().x);
    let total = block_sum_f32(v, block_sum_scratch());
    y.set(global_thread(), total);
}

/// `block_sum_f32` done on the host in the same order: warp butterflies, then warp 0's.
fn host_block_sum(vals: &[f32]) -> f32 {
    let n_warps = vals.len().div_ceil(32);
    let partials: Vec<f32> = vals
        .chunks(32)
        .map(|w| host_butterfly(w, |a, c| a + c)[0])
        .collect();
    let lanes: Vec<f32> = (0..32)
        .map(|l| if l < n_warps { partials[l] } else { 0.0 })
        .collect();
    host_butterfly(&lanes, |a, c| a + c)[0]
}

#[test]
fn block_sum_matches_host_bit_for_bit() {
    for n in [32u32, 64, 256, 1024] {
        let blocks = 2u32;
        let mut y = vec![f32::NAN; (blocks * n) as usize];
        let yo = Out::from_slice(&mut y);
        emu::launch(linear(blocks, n), || block_sum_kernel(yo)).unwrap();
        for b in 0..blocks {
            let vals: Vec<f32> = (0..n).map(|t| value(b, t)).collect();
            let want = host_block_sum(&vals);
            let exact: f64 = vals.iter().map(|v| *v as f64).sum();
            let bound =
                64.0 * f32::EPSILON as f64 * vals.iter().map(|v| v.abs() as f64).sum::<f64>();
            assert!(
                (want as f64 - exact).abs() <= bound,
                "n {n}: {want} vs {exact}"
            );
            for t in 0..n {
                assert_eq!(
                    y[(b * n + t) as usize].to_bits(),
                    want.to_bits(),
                    "n {n}, block {b}, thread {t}"
                );
            }
        }
    }
}

fn warp_sum_only(y: Out<f32>) {
    y.set(global_thread(), warp_sum_f32(1.0));
}

fn shfl_idx_from_lane_20(y: Out<f32>) {
    y.set(global_thread(), shfl_idx_f32(1.0, 20));
}

#[test]
fn shuffles_across_a_partial_warp_are_errors() {
    // 48 threads: warp 1 has only lanes 0..15.
    let mut y = vec![0.0f32; 48];
    let yo = Out::from_slice(&mut y);
    for (what, msg) in [
        (
            "warp_sum_f32",
            expect_err(emu::launch(linear(1, 48), || warp_sum_only(yo))),
        ),
        (
            "shfl_idx",
            expect_err(emu::launch(linear(1, 48), || shfl_idx_from_lane_20(yo))),
        ),
    ] {
        assert!(
            msg.starts_with("block (0, 0, 0) thread (")
                && msg.contains("of a warp with 16 lanes (blocks must be whole warps)"),
            "{what}: {msg}"
        );
        let t = reported_thread(&msg);
        assert!(
            (32..48).contains(&t),
            "{what}: the report names thread {t}: {msg}"
        );
    }
    // The full warp 0 alone is fine.
    emu::launch(linear(1, 32), || warp_sum_only(yo)).unwrap();
    assert!(y[..32].iter().all(|v| *v == 32.0));
}

/// Lanes 16..31 return at once; the rest vote, then shuffle with `xor_mask`.
fn half_warp_exits(y: Out<u32>, xor_mask: u32) {
    let lane = lane_id();
    if lane >= 16 {
        return;
    }
    let base = lane as usize * 4;
    y.set(base, ballot(lane.is_multiple_of(3)));
    y.set(base + 1, vote_all(true) as u32);
    y.set(base + 2, vote_any(lane == 7) as u32);
    y.set(base + 3, shfl_xor_u32(lane * 10, xor_mask));
}

#[test]
fn exited_lanes_take_no_part_in_warp_collectives() {
    let mut y = vec![u32::MAX; 64];
    let yo = Out::from_slice(&mut y);
    // Shuffles within the lanes still there are fine; exited lanes vote nothing.
    emu::launch(linear(1, 32), || half_warp_exits(yo, 1)).unwrap();
    let ballot_want = (0..16u32)
        .filter(|l| l.is_multiple_of(3))
        .fold(0u32, |m, l| m | 1 << l);
    for lane in 0..16u32 {
        let got = &y[lane as usize * 4..lane as usize * 4 + 4];
        assert_eq!(got, [ballot_want, 1, 1, (lane ^ 1) * 10], "lane {lane}");
    }
    // Reading an exited lane is an error (on the GPU: garbage).
    let msg = expect_err(emu::launch(linear(1, 32), || half_warp_exits(yo, 16)));
    assert!(
        msg.starts_with("block (0, 0, 0) thread (")
            && msg.contains("shfl.sync.bfly.b32 reads lane")
            && msg.contains("which has exited"),
        "{msg}"
    );
}

/// Lanes 0..15 ballot, lanes 16..31 shuffle: a collective the warp never completes.
fn mismatched_collectives(y: Out<u32>) {
    let lane = lane_id();
    let v = if lane < 16 {
        ballot(true)
    } else {
        shfl_xor_u32(lane, 1)
    };
    y.set(lane as usize, v);
}

#[test]
fn lanes_at_different_collectives_are_an_error() {
    let mut y = vec![0u32; 32];
    let yo = Out::from_slice(&mut y);
    let msg = expect_err(emu::launch(linear(1, 32), || mismatched_collectives(yo)));
    assert!(
        msg.contains("mismatched warp collective: this thread is at shfl.sync.bfly.b32 (1 words), others at vote.sync.ballot.b32 (1 words)"),
        "{msg}"
    );
}
