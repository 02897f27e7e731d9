//! The device API on the emulator: the same functions `nvptx.rs` provides, answered for the
//! running coroutine. Thread and block ids are plain loads from the running thread's context;
//! warp operations are [`collective`]s over the warp; atomics are host atomics.
//! (Shared memory is in `shared.rs`.)

use super::block::{self, ctx};
use super::collective::{Exchange, Group, collective};
use crate::device::ptr::Out;
use crate::device::types::{Dim3, WARP_SIZE};
use std::sync::atomic::{AtomicU32, Ordering};

#[inline(always)]
pub fn thread_idx() -> Dim3 {
    ctx().thread_idx
}
#[inline(always)]
pub fn block_idx() -> Dim3 {
    ctx().block_idx
}
#[inline(always)]
pub fn block_dim() -> Dim3 {
    ctx().block_dim
}
#[inline(always)]
pub fn grid_dim() -> Dim3 {
    ctx().grid_dim
}

/// `bar.sync 0`: every live (not exited) thread of the block must arrive.
pub fn sync_threads() {
    block::barrier()
}

/// Every lane publishes `v`, then reads the value of lane `source(lane)`.
fn shuffle(what: &'static str, v: u32, source: impl FnOnce(u32) -> u32) -> u32 {
    collective(what, Group::Warp, &[v], |ex| {
        ex.read(source(ex.member()), 0)
    })
}

pub fn shfl_xor_u32(v: u32, lane_mask: u32) -> u32 {
    shuffle("shfl.sync.bfly.b32", v, |lane| {
        (lane ^ lane_mask) & (WARP_SIZE - 1)
    })
}
pub fn shfl_xor_f32(v: f32, lane_mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(v.to_bits(), lane_mask))
}
pub fn shfl_down_f32(v: f32, delta: u32) -> f32 {
    // Out-of-range sources return the caller's own value, as `shfl.sync.down` does.
    f32::from_bits(shuffle("shfl.sync.down.b32", v.to_bits(), |lane| {
        if lane + delta < WARP_SIZE {
            lane + delta
        } else {
            lane
        }
    }))
}
pub fn shfl_idx_u32(v: u32, lane: u32) -> u32 {
    shuffle("shfl.sync.idx.b32", v, |_| lane & (WARP_SIZE - 1))
}
pub fn shfl_idx_f32(v: f32, lane: u32) -> f32 {
    f32::from_bits(shfl_idx_u32(v.to_bits(), lane))
}

/// `vote.sync.ballot` over the warp: (the predicate bits, the lanes that took part). Lanes that
/// have exited contribute nothing.
fn vote(pred: bool) -> (u32, u32) {
    collective("vote.sync.ballot.b32", Group::Warp, &[pred as u32], |ex| {
        (0..ex.members())
            .filter(|&l| ex.took_part(l))
            .fold((0, 0), |(bits, mask), l| {
                (bits | (ex.read(l, 0) & 1) << l, mask | 1 << l)
            })
    })
}
pub fn ballot(pred: bool) -> u32 {
    vote(pred).0
}
/// `redux.sync.max.u32` over the warp: the largest value of the lanes that took part.
pub fn warp_max_u32(v: u32) -> u32 {
    collective("redux.sync.max.u32", Group::Warp, &[v], |ex| {
        (0..ex.members())
            .filter(|&l| ex.took_part(l))
            .map(|l| ex.read(l, 0))
            .max()
            .unwrap_or(0)
    })
}
/// `bar.warp.sync`: a collective that publishes nothing; no lane passes before all arrived.
pub fn sync_warp() {
    collective("bar.warp.sync", Group::Warp, &[], |_| ())
}
pub fn vote_any(pred: bool) -> bool {
    vote(pred).0 != 0
}
pub fn vote_all(pred: bool) -> bool {
    let (bits, mask) = vote(pred);
    bits == mask
}

/// The tensor-core product of `nvptx::mma_bf16_m16n8k16`, computed from the whole warp's
/// fragments (a collective of ten words per lane). Products are exact in f64 and summed there,
/// then added to C and rounded once: the hardware's internal summation differs in the last
/// bits, so tests compare against references with a tolerance, never emulator bits to GPU bits.
pub fn mma_bf16_m16n8k16(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
    let words = [
        a[0],
        a[1],
        a[2],
        a[3],
        b[0],
        b[1],
        c[0].to_bits(),
        c[1].to_bits(),
        c[2].to_bits(),
        c[3].to_bits(),
    ];
    collective("mma.sync.m16n8k16", Group::Warp, &words, |ex| {
        mma_fragment(ex)
    })
}

fn mma_fragment(ex: &Exchange<'_>) -> [f32; 4] {
    if ex.members() != WARP_SIZE {
        panic!(
            "mma.sync needs a whole warp; this one has {} lanes",
            ex.members()
        );
    }
    // The whole 16×8 tile D, row-major as f32 bits, computed once for the warp.
    let d = ex.once(|ex, d| {
        // Lane l's register r is word 10·l + r.
        let words = ex.all_words();
        let half = |w: u32, hi: usize| f64::from(f32::from_bits(((w >> (16 * hi)) & 0xffff) << 16));
        // A[i][k]: lane (i % 8)·4 + (k % 8)/2, register (i ≥ 8) + 2·(k ≥ 8), half k % 2.
        let mut a = [[0f64; 16]; 16];
        for (i, row) in a.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v = half(
                    words[10 * ((i % 8) * 4 + (k % 8) / 2) + i / 8 + 2 * (k / 8)],
                    k % 2,
                );
            }
        }
        // B[k][j]: lane j·4 + (k % 8)/2, register 4 + (k ≥ 8), half k % 2.
        let mut b = [[0f64; 16]; 8];
        for (j, col) in b.iter_mut().enumerate() {
            for (k, v) in col.iter_mut().enumerate() {
                *v = half(words[10 * (j * 4 + (k % 8) / 2) + 4 + k / 8], k % 2);
            }
        }
        // Each dot product summed in k order (k outermost, so the 128 sums pipeline).
        let mut dot = [[-0.0f64; 8]; 16];
        for k in 0..16 {
            for (i, row) in dot.iter_mut().enumerate() {
                for (j, acc) in row.iter_mut().enumerate() {
                    *acc += a[i][k] * b[j][k];
                }
            }
        }
        // C[i][j]: lane (i % 8)·4 + j/2, register 6 + 2·(i ≥ 8) + j % 2.
        for (i, row) in dot.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let c = f32::from_bits(words[10 * ((i % 8) * 4 + j / 2) + 6 + 2 * (i / 8) + j % 2]);
                d.push(((v + f64::from(c)) as f32).to_bits());
            }
        }
    });
    // This lane's fragment: row g + 8·(r ≥ 2), column 2t + r % 2.
    let (g, t) = ((ex.member() / 4) as usize, (ex.member() % 4) as usize);
    std::array::from_fn(|r| f32::from_bits(d[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2]))
}

fn atomic_word(p: *mut u32) -> &'static AtomicU32 {
    // SAFETY: `p` is an in-bounds, 4-byte-aligned element of a live buffer (checked by
    // `Out::element_ptr`); every concurrent access to it during the launch is atomic.
    unsafe { AtomicU32::from_ptr(p) }
}

pub fn atomic_add_f32(p: Out<f32>, i: usize, v: f32) -> f32 {
    let word = atomic_word(p.element_ptr(i) as *mut u32);
    let old = word
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            Some((f32::from_bits(w) + v).to_bits())
        })
        .unwrap_or_else(|w| w);
    f32::from_bits(old)
}
pub fn atomic_add_u32(p: Out<u32>, i: usize, v: u32) -> u32 {
    atomic_word(p.element_ptr(i)).fetch_add(v, Ordering::Relaxed)
}
/// `fence.acq_rel.gpu`, as a host fence (the emulated threads run on host threads).
pub fn threadfence() {
    std::sync::atomic::fence(Ordering::SeqCst)
}
