//! Mixture-of-experts routing and combination around the grouped GEMMs in `gemm_wgmma.rs`:
//! top-k selection per token, grouping of (token, slot) pairs by expert with a tile table for
//! the grouped GEMM, and the one-launch weighted scatter-reduce back to token order.
//!
//! Batch invariance: each token's routing is computed by one warp in a fixed order (xor
//! butterflies over the same lanes whatever the launch); the grouping (a histogram per chunk of
//! pairs, a scan, a placement) only decides *where* a pair's row is stored (stable: by expert,
//! then pair id), and a row's GEMM result does not depend on its neighbours (nor does its bf16
//! rounding, a function of each element's own accumulator); the combine sums each token's
//! expert outputs in top-k slot order and adds the shared expert last, so no sum depends on how
//! many tokens share a launch or an expert.

// `seq!` unrolls by substituting each literal index into code written for all of them
// (`row0 + P`, `P.min(rows - 1)` with P = 0); the lints below would flag that case.
#![allow(clippy::identity_op, clippy::unnecessary_min_or_max)]

use crate::device::float::unpack_bf16x2;
use crate::device::math::{exp, fma, max, sigmoid};
use crate::device::*;
use seq_macro::seq;
/// Rows per tile of the grouped GEMMs (`gemm_wgmma::GROUPED_BM`).
pub const GROUP_TILE_ROWS: usize = crate::gemm_wgmma::GROUPED_BM;

/// Experts a model may have (per-expert state lives in shared memory).
pub const MAX_EXPERTS: usize = 1024;
/// Threads per block of the router (one warp per token).
pub const ROUTER_THREADS: u32 = 128;
/// Pairs one warp of the grouping walks, in order: the unit of the histogram.
pub const GROUP_CHUNK_PAIRS: usize = 1024;
/// Warps (chunks) per block of the counting and placing kernels.
pub const GROUP_WARPS: usize = 4;
/// Threads of the single-block scan.
pub const SCAN_THREADS: u32 = 1024;

shared_array!(fn moe_running() -> [u32; 4096]);
shared_array!(fn moe_scan_offsets() -> [u32; 1025]);
shared_array!(fn moe_scan_tiles() -> [u32; 1025]);

/// The better of two (logit, expert) candidates: higher logit, ties to the lower expert id;
/// `u32::MAX` marks "none". A NaN logit ranks as −∞: the order must be total, or the warp's
/// butterfly leaves lanes disagreeing on the winner (NaN compares false both ways), an expert
/// is never marked taken, and a later slot can come out as "none" — an id the grouping would
/// index with (a NaN hidden state upstream gives NaN routing weights, not a bad id).
#[inline(always)]
pub(crate) fn better(a: (f32, u32), b: (f32, u32)) -> (f32, u32) {
    let rank = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let (va, vb) = (rank(a.0), rank(b.0));
    let b_wins = a.1 == u32::MAX || (b.1 != u32::MAX && (vb > va || (vb == va && b.1 < a.1)));
    if b_wins { b } else { a }
}

/// Routing flags (`moe_router_topk` and `moe_router::moe_router_finish_*`).
pub const FLAG_RENORMALISE: u32 = 1;
pub const FLAG_WRITE_LOGITS: u32 = 2;

/// A token's router logits held as partial sums: `parts` per K segment (the router's bf16
/// parts of its f32 weights, or 1), for each of `segments` K segments, laid out
/// `[segments][n_tokens][parts][n_expert]`.
#[derive(Clone, Copy)]
pub(crate) struct PartialLogits {
    pub partials: In<f32>,
    pub n_tokens: usize,
    pub n_expert: usize,
    pub parts: usize,
    pub segments: usize,
}

impl PartialLogits {
    /// The logit of token `t` for expert `e`: the partials added one at a time, part by part
    /// in index order (the router stores its parts smallest first, so the rounding of the sum
    /// comes last, at the largest magnitude), each part's segments in index order. One part of
    /// one segment is the logit itself.
    #[inline(always)]
    pub fn logit(self, t: usize, e: usize) -> f32 {
        let (ne, parts) = (self.n_expert, self.parts);
        let plane = self.n_tokens * parts * ne;
        let row = self.partials.offset(t * parts * ne + e);
        let mut sum = row.at(0);
        for p in 0..parts {
            for s in 0..self.segments {
                if p + s > 0 {
                    sum += row.at(s * plane + p * ne);
                }
            }
        }
        sum
    }

    /// This lane's logits of token `t` for experts `lane + 32 j`, `j < EPL` (0 past
    /// `n_expert`): the same sums as [`PartialLogits::logit`], in the same order, with the
    /// loads of `16 / EPL` partials per expert issued before any is added (one partial at a
    /// time waits a memory latency each: 48 in a row at 4 segments). The partials' offsets
    /// advance by adds, not by dividing a running index by `segments`.
    #[inline(always)]
    pub fn lane_logits<const EPL: usize>(self, t: usize, lane: usize) -> [f32; EPL] {
        let round = (16 / EPL).clamp(1, 4);
        let (ne, parts, segments) = (self.n_expert, self.parts, self.segments);
        let plane = self.n_tokens * parts * ne;
        let row = self.partials.offset(t * parts * ne);
        let mut sums = [0.0f32; EPL];
        // The next partial: part `p` of segment `s`, at `row + at`.
        let (mut p, mut s, mut at, mut first) = (0, 0, 0, true);
        while p < parts {
            let mut offsets = [usize::MAX; 4];
            for slot in offsets.iter_mut().take(round) {
                if p < parts {
                    *slot = at;
                    s += 1;
                    at += plane;
                    if s == segments {
                        (s, p) = (0, p + 1);
                        at = p * ne;
                    }
                }
            }
            let v: [[f32; EPL]; 4] = core::array::from_fn(|i| {
                core::array::from_fn(|j| {
                    let ok = offsets[i] != usize::MAX && lane + 32 * j < ne;
                    if ok {
                        row.at(offsets[i] + lane + 32 * j)
                    } else {
                        0.0
                    }
                })
            });
            for (vi, &o) in v.iter().zip(&offsets) {
                if o != usize::MAX {
                    for (sum, &x) in sums.iter_mut().zip(vi) {
                        *sum = if first { x } else { *sum + x };
                    }
                    first = false;
                }
            }
        }
        sums
    }
}

kernel! {
    /// One warp per token (`ROUTER_THREADS` per block, any grid covering the tokens): softmax
    /// over `n_expert` router logits, the `top_k` largest logits (ties → lower expert id; the
    /// probability is monotone in the logit, so this is the top-k by probability without its
    /// rounding ties), renormalised to sum 1 with `FLAG_RENORMALISE`. Writes `ids[t][s]` and
    /// `weights[t][s]` in selection order, and with `FLAG_WRITE_LOGITS` the logits
    /// `[t][n_expert]`. The logits are `parts` partials per token and K segment
    /// (`PartialLogits`, `[segments][n_tokens][parts][n_expert]`). Lane `l`
    /// holds experts `l, l + 32, …`; every reduction is an xor butterfly, so the token's
    /// result depends on its own logits alone.
    pub fn moe_router_topk(
        partials: In<f32>,
        ids: Out<u32>,
        weights: Out<f32>,
        logits: Out<f32>,
        n_tokens: u32,
        n_expert: u32,
        top_k: u32,
        parts: u32,
        segments: u32,
        flags: u32
    ) {
        let t = (block_idx().x * (block_dim().x / WARP_SIZE) + warp_id()) as usize;
        if t >= n_tokens as usize {
            return;
        }
        let (ne, k, lane) = (n_expert as usize, top_k as usize, lane_id() as usize);
        let (n, parts, segments) = (n_tokens as usize, parts as usize, segments as usize);
        let layout = PartialLogits { partials, n_tokens: n, n_expert: ne, parts, segments };
        let logit = |e: usize| layout.logit(t, e);
        let mut m = f32::NEG_INFINITY;
        let mut e = lane;
        while e < ne {
            let v = logit(e);
            if flags & FLAG_WRITE_LOGITS != 0 {
                logits.set(t * ne + e, v);
            }
            m = max(m, v);
            e += WARP_SIZE as usize;
        }
        let m = warp_max_f32(m);
        let mut sum = 0.0f32;
        let mut e = lane;
        while e < ne {
            sum += exp(logit(e) - m);
            e += WARP_SIZE as usize;
        }
        let sum = warp_sum_f32(sum);
        // Bit j: expert lane + 32 j is taken.
        let mut taken = 0u32;
        let mut total = 0.0f32;
        let mut chosen = 0u32;
        let mut chosen_p = 0.0f32;
        for s in 0..k {
            let mut best = (f32::NEG_INFINITY, u32::MAX);
            let (mut e, mut j) = (lane, 0);
            while e < ne {
                if taken & (1 << j) == 0 {
                    best = better(best, (logit(e), e as u32));
                }
                e += WARP_SIZE as usize;
                j += 1;
            }
            let mut mask = 16;
            while mask > 0 {
                let other = (shfl_xor_f32(best.0, mask), shfl_xor_u32(best.1, mask));
                best = better(best, other);
                mask >>= 1;
            }
            if best.1 as usize % WARP_SIZE as usize == lane {
                taken |= 1 << (best.1 / WARP_SIZE);
            }
            let p = exp(best.0 - m) / sum;
            if s == lane {
                (chosen, chosen_p) = (best.1, p);
            }
            total += p;
        }
        if lane < k {
            let renorm = flags & FLAG_RENORMALISE != 0;
            let p = if renorm { chosen_p / total } else { chosen_p };
            ids.set(t * k + lane, chosen);
            weights.set(t * k + lane, p);
        }
    }
}

/// Walks pairs `first..end` with one warp, 32 pairs at a time in pair order,
/// keeping per-expert running row counts in `running` (this warp's own `n_expert` words). Each
/// pair's row is its expert's running count plus the number of earlier lanes of its round with
/// the same expert, so the order within an expert is pair order (a stable grouping). With
/// `place`, writes `sorted[row] = pair` and `row_of_pair[pair] = row`.
#[inline(always)]
pub(crate) fn walk_pairs(
    ids: In<u32>,
    (first, end): (usize, usize),
    expert_bits: u32,
    running: Shared<u32>,
    place: Option<(Out<u32>, Out<u32>)>,
) {
    let mut p0 = first;
    while p0 < end {
        let p = p0 + lane_id() as usize;
        let valid = p < end;
        let e = if valid { ids.at(p) } else { 0 };
        let peers = lanes_with_same(e, expert_bits, valid);
        let rank = (peers & lanes_below()).count_ones();
        let base = if valid { running.load(e as usize) } else { 0 };
        // Every peer has read the running count before the last of them advances it.
        sync_warp();
        if valid && rank + 1 == peers.count_ones() {
            running.store(e as usize, base + peers.count_ones());
        }
        if let Some((sorted, row_of_pair)) = place
            && valid
        {
            sorted.set((base + rank) as usize, p as u32);
            row_of_pair.set(p, base + rank);
        }
        sync_warp();
        p0 += WARP_SIZE as usize;
    }
}

/// The pairs of chunk `chunk`: `first..end`.
#[inline(always)]
fn chunk_pairs(n_pairs: usize, chunk: usize) -> (usize, usize) {
    let first = chunk * GROUP_CHUNK_PAIRS;
    (first, (first + GROUP_CHUNK_PAIRS).min(n_pairs))
}

/// This warp's chunk (`None` past the last) and its `n_expert` running counts in shared memory.
#[inline(always)]
fn chunk_of_warp(n_pairs: usize, ne: usize) -> Option<(usize, Shared<u32>)> {
    let chunk = block_idx().x as usize * GROUP_WARPS + warp_id() as usize;
    if chunk * GROUP_CHUNK_PAIRS >= n_pairs {
        return None;
    }
    Some((chunk, moe_running().offset(warp_id() as usize * ne)))
}

/// Bits that tell the experts of `n_expert` apart.
#[inline(always)]
pub(crate) fn expert_bits(ne: usize) -> u32 {
    usize::BITS - (ne.max(2) - 1).leading_zeros()
}

kernel! {
    /// Grouping, step 1 of 3: `counts[c][e]` = pairs of chunk `c` routed to expert `e`.
    /// One warp per chunk of `GROUP_CHUNK_PAIRS` pairs, `GROUP_WARPS` warps per block.
    pub fn moe_group_count(ids: In<u32>, counts: Out<u32>, n_pairs: u32, n_expert: u32) {
        let (n_pairs, ne) = (n_pairs as usize, n_expert as usize);
        let Some((chunk, running)) = chunk_of_warp(n_pairs, ne) else {
            return;
        };
        let mut e = lane_id() as usize;
        while e < ne {
            running.store(e, 0);
            e += WARP_SIZE as usize;
        }
        sync_warp();
        walk_pairs(ids, chunk_pairs(n_pairs, chunk), expert_bits(ne), running, None);
        let mut e = lane_id() as usize;
        while e < ne {
            counts.set(chunk * ne + e, running.load(e));
            e += WARP_SIZE as usize;
        }
    }
}

kernel! {
    /// Grouping, step 2 of 3 (one block of `SCAN_THREADS`): from the per-chunk counts, each
    /// expert's first row `offsets[e]` (`offsets[n_expert]` = pairs), each chunk's first row
    /// per expert (written over `counts`: `counts[c][e]` becomes `offsets[e] + Σ_{c' < c}`),
    /// and the grouped GEMM's tile table: `tiles[2t] = expert`, `tiles[2t + 1] = first row`,
    /// `num_tiles[0]`.
    pub fn moe_group_scan(
        counts: Out<u32>,
        offsets: Out<u32>,
        tiles: Out<u32>,
        num_tiles: Out<u32>,
        n_chunks: u32,
        n_expert: u32
    ) {
        let (n_chunks, ne) = (n_chunks as usize, n_expert as usize);
        let (rows, first_tile) = (moe_scan_offsets(), moe_scan_tiles());
        let tid = thread_idx().x as usize;
        let threads = block_dim().x as usize;
        let mut e = tid;
        while e < ne {
            let mut total = 0;
            for c in 0..n_chunks {
                total += counts.at(c * ne + e);
            }
            rows.store(e + 1, total);
            e += threads;
        }
        sync_threads();
        if tid == 0 {
            // Exclusive scans over experts of rows and of tiles (⌈rows / tile⌉ each).
            let (mut acc, mut tile_acc) = (0u32, 0u32);
            for e in 0..ne {
                let count = rows.load(e + 1);
                rows.store(e, acc);
                first_tile.store(e, tile_acc);
                acc += count;
                tile_acc += count.div_ceil(GROUP_TILE_ROWS as u32);
            }
            rows.store(ne, acc);
            first_tile.store(ne, tile_acc);
            offsets.set(ne, acc);
            num_tiles.set(0, tile_acc);
        }
        sync_threads();
        let mut e = tid;
        while e < ne {
            let first = rows.load(e);
            offsets.set(e, first);
            let mut running = first;
            for c in 0..n_chunks {
                let count = counts.at(c * ne + e);
                counts.set(c * ne + e, running);
                running += count;
            }
            let mut t = first_tile.load(e) as usize;
            let mut row = first;
            while row < running {
                tiles.set(2 * t, e as u32);
                tiles.set(2 * t + 1, row);
                t += 1;
                row += GROUP_TILE_ROWS as u32;
            }
            e += threads;
        }
    }
}

kernel! {
    /// Grouping, step 3 of 3: places every pair, `sorted[row] = pair` and
    /// `row_of_pair[pair] = row`, starting each chunk's experts at the rows `moe_group_scan`
    /// left in `first_rows`. Same grid as `moe_group_count`.
    pub fn moe_group_place(
        ids: In<u32>,
        first_rows: In<u32>,
        sorted: Out<u32>,
        row_of_pair: Out<u32>,
        n_pairs: u32,
        n_expert: u32
    ) {
        let (n_pairs, ne) = (n_pairs as usize, n_expert as usize);
        let Some((chunk, running)) = chunk_of_warp(n_pairs, ne) else {
            return;
        };
        let mut e = lane_id() as usize;
        while e < ne {
            running.store(e, first_rows.at(chunk * ne + e));
            e += WARP_SIZE as usize;
        }
        sync_warp();
        let place = Some((sorted, row_of_pair));
        walk_pairs(ids, chunk_pairs(n_pairs, chunk), expert_bits(ne), running, place);
    }
}

/// Features one thread of `moe_combine` sums: 8-byte loads of bf16 expert rows, 16-byte loads
/// and stores of the f32 residual (`hidden` must be a multiple; the grouped GEMMs' tensor maps
/// already need a multiple of 8).
pub const COMBINE_WIDTH: usize = 4;

kernel! {
    /// The weighted scatter-reduce, in one launch: for token `t` and feature `d`,
    /// `y[t, d] += Σ_s weights[t, s] · expert_out[row_of_pair[t·k + s], d]` in slot order, then
    /// (when `has_shared`) `+ sigmoid(shared_gate[t]) · shared_out[t, d]` last. `expert_out`
    /// is bf16 (the grouped down GEMM's output), widened exactly to f32; the sum is f32 fmas.
    /// One thread per (t, `COMBINE_WIDTH` features); any 1-D grid covering them.
    pub fn moe_combine(
        expert_out: In<u16>,
        row_of_pair: In<u32>,
        weights: In<f32>,
        shared_out: In<f32>,
        shared_gate: In<f32>,
        y: Out<f32>,
        n_tokens: u32,
        hidden: u32,
        top_k: u32,
        has_shared: u32
    ) {
        const W: usize = COMBINE_WIDTH;
        let i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        let (hidden, k) = (hidden as usize, top_k as usize);
        let groups = hidden / W;
        if i >= n_tokens as usize * groups {
            return;
        }
        let (t, d) = (i / groups, W * (i % groups));
        // The `W` bf16 of a slot as two packed pairs: one 8-byte load.
        const { assert!(W == 4) };
        let pairs = expert_out.cast::<u32>();
        let mut acc = [0.0f32; W];
        for s in 0..k {
            let row = row_of_pair.at(t * k + s) as usize;
            let p = pairs.at2((row * hidden + d) / 2);
            let v = [unpack_bf16x2(p[0]), unpack_bf16x2(p[1])];
            let wt = weights.at(t * k + s);
            for e in 0..W {
                acc[e] = fma(wt, v[e / 2][e % 2], acc[e]);
            }
        }
        let at = t * hidden + d;
        if has_shared != 0 {
            let (g, v) = (sigmoid(shared_gate.at(t)), shared_out.at4(at));
            for e in 0..W {
                acc[e] = fma(g, v[e], acc[e]);
            }
        }
        let old = y.as_in().at4(at);
        y.set4(at, core::array::from_fn(|e| old[e] + acc[e]));
    }
}

/// Rows one `moe_gather_rows` block copies: every thread issues its loads for all of them
/// before its first store, so a multiprocessor keeps enough bytes in flight to reach the
/// copy rate (one row per block of 32-bit pieces stored as each arrived: 60 µs for 134 MB at
/// N = 4096, H200).
pub const GATHER_ROWS: usize = 4;

kernel! {
    /// The grouped GEMM's input: `xg[row] = x[sorted[row] / top_k]` (bf16 rows of `hidden`, a
    /// multiple of 8, moved in 16-byte pieces). Block `b` copies rows `GATHER_ROWS·b..` (those
    /// below `n_rows`); grid: `⌈n_rows / GATHER_ROWS⌉` blocks of any size. A copy: no
    /// arithmetic, so nothing depends on the batch.
    pub fn moe_gather_rows(x: In<u16>, sorted: In<u32>, xg: Out<u16>, top_k: u32, hidden: u32, n_rows: u32) {
        const R: usize = GATHER_ROWS;
        let row0 = block_idx().x as usize * R;
        let rows = (n_rows as usize - row0).min(R);
        let words = hidden as usize / 2;
        let token = |r: usize| sorted.at(row0 + r) as usize / top_k as usize;
        let (src, dst) = (x.cast::<u32>(), xg.cast::<u32>());
        let step = 4 * block_dim().x as usize;
        const { assert!(R == 4) };
        // Unrolled by `seq!` so the pieces stay in registers (a loop over an array of them
        // went through local memory, one 4-byte access at a time).
        // Rows past the end re-read the last row (never stored): the loads stay unconditional.
        seq!(P in 0..4 {
            let base~P = token(P.min(rows - 1)) * words;
        });
        let mut i = 4 * thread_idx().x as usize;
        while i < words {
            seq!(P in 0..4 {
                let v~P = src.at4(base~P + i);
            });
            seq!(P in 0..4 {
                if P < rows {
                    dst.set4((row0 + P) * words + i, v~P);
                }
            });
            i += step;
        }
    }
}
