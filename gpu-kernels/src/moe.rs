//! Mixture-of-experts routing and combination around the grouped GEMMs in `gemm.rs`:
//! top-k selection per token, grouping of (token, slot) pairs by expert with a tile table for
//! the grouped GEMM, and the one-launch weighted scatter-reduce back to token order.
//!
//! Batch invariance: each token's routing is computed by one thread in a fixed order; the
//! grouping only decides *where* a pair's row is stored (stable: by expert, then pair id);
//! the combine sums each token's expert outputs in top-k slot order and adds the shared expert
//! last, so no sum depends on how many tokens share a launch or an expert.

use crate::device::math::{exp, fma, max, sigmoid};
use crate::device::*;
/// Rows per tile of the grouped GEMMs (the block tile of `gemm_wgmma`).
pub const GROUP_TILE_ROWS: usize = crate::gemm_wgmma::BM;

/// Experts a model may have (the grouping kernel keeps per-expert state in shared memory).
pub const MAX_EXPERTS: usize = 1024;
/// Threads of the single-block grouping kernel.
pub const GROUP_THREADS: u32 = 1024;

shared_array!(fn moe_offsets() -> [u32; 1025]);

kernel! {
    /// Per token (one thread each; any 1-D grid): softmax over `n_expert` router logits, top
    /// `top_k` by probability (ties → lower expert id), optionally renormalised to sum 1.
    /// Writes `ids[t][s]` and `weights[t][s]` in selection order.
    pub fn moe_router_topk(
        logits: In<f32>,
        ids: Out<u32>,
        weights: Out<f32>,
        n_tokens: u32,
        n_expert: u32,
        top_k: u32,
        renormalise: u32
    ) {
        let t = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        if t >= n_tokens as usize {
            return;
        }
        let (ne, k) = (n_expert as usize, top_k as usize);
        let row = t * ne;
        let mut m = f32::NEG_INFINITY;
        for e in 0..ne {
            m = max(m, logits.at(row + e));
        }
        let mut sum = 0.0f32;
        for e in 0..ne {
            sum += exp(logits.at(row + e) - m);
        }
        let mut total = 0.0f32;
        for s in 0..k {
            let mut best = usize::MAX;
            let mut best_p = 0.0f32;
            for e in 0..ne {
                let mut taken = false;
                for prev in 0..s {
                    taken |= ids.at(t * k + prev) as usize == e;
                }
                let p = exp(logits.at(row + e) - m) / sum;
                if !taken && (best == usize::MAX || p > best_p) {
                    best = e;
                    best_p = p;
                }
            }
            ids.set(t * k + s, best as u32);
            weights.set(t * k + s, best_p);
            total += best_p;
        }
        if renormalise != 0 {
            for s in 0..k {
                weights.set(t * k + s, weights.at(t * k + s) / total);
            }
        }
    }
}

/// Pairs with expert `e`, counted (and, when `write`, placed) 32 at a time with a ballot, in
/// ascending pair order. Returns the count.
#[inline(always)]
fn scan_expert(
    ids: In<u32>,
    n_pairs: usize,
    e: u32,
    base: u32,
    write: Option<(Out<u32>, Out<u32>)>,
) -> u32 {
    let lane = lane_id();
    let mut count = 0u32;
    let mut p0 = 0;
    while p0 < n_pairs {
        let p = p0 + lane as usize;
        let hit = p < n_pairs && ids.at(p) == e;
        let mask = ballot(hit);
        if let Some((sorted, row_of_pair)) = write
            && hit
        {
            let row = base + count + (mask & ((1u32 << lane) - 1)).count_ones();
            sorted.set(row as usize, p as u32);
            row_of_pair.set(p, row);
        }
        count += mask.count_ones();
        p0 += WARP_SIZE as usize;
    }
    count
}

kernel! {
    /// Groups the `n_pairs` (token, slot) pairs by expert. One block of `GROUP_THREADS`; warp
    /// `w` owns experts `w, w + 32, …`. Writes `offsets[n_expert + 1]` (prefix sums),
    /// `sorted[row] = pair`, `row_of_pair[pair] = row`, and the grouped GEMM's tile table:
    /// `tiles[2t] = expert`, `tiles[2t + 1] = first row`, `num_tiles[0]`.
    pub fn moe_group(
        ids: In<u32>,
        sorted: Out<u32>,
        row_of_pair: Out<u32>,
        offsets: Out<u32>,
        tiles: Out<u32>,
        num_tiles: Out<u32>,
        n_pairs: u32,
        n_expert: u32
    ) {
        let shared = moe_offsets();
        let (n_pairs, ne) = (n_pairs as usize, n_expert as usize);
        let n_warps = block_dim().x / WARP_SIZE;
        let mut e = warp_id();
        while (e as usize) < ne {
            let count = scan_expert(ids, n_pairs, e, 0, None);
            if lane_id() == 0 {
                shared.store(e as usize + 1, count);
            }
            e += n_warps;
        }
        sync_threads();
        if thread_idx().x == 0 {
            let mut acc = 0u32;
            let mut t = 0usize;
            shared.store(0, 0);
            offsets.set(0, 0);
            for e in 0..ne {
                let count = shared.load(e + 1);
                let mut first = acc;
                while first < acc + count {
                    tiles.set(2 * t, e as u32);
                    tiles.set(2 * t + 1, first);
                    t += 1;
                    first += GROUP_TILE_ROWS as u32;
                }
                acc += count;
                shared.store(e + 1, acc);
                offsets.set(e + 1, acc);
            }
            num_tiles.set(0, t as u32);
        }
        sync_threads();
        let mut e = warp_id();
        while (e as usize) < ne {
            let base = shared.load(e as usize);
            scan_expert(ids, n_pairs, e, base, Some((sorted, row_of_pair)));
            e += n_warps;
        }
    }
}

kernel! {
    /// The weighted scatter-reduce, in one launch: for token `t` and feature `d`,
    /// `y[t, d] += Σ_s weights[t, s] · expert_out[row_of_pair[t·k + s], d]` in slot order, then
    /// (when `has_shared`) `+ sigmoid(shared_gate[t]) · shared_out[t, d]` last.
    /// One thread per (t, d); any 1-D grid covering `n_tokens · hidden`.
    pub fn moe_combine(
        expert_out: In<f32>,
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
        let i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        let hidden = hidden as usize;
        if i >= n_tokens as usize * hidden {
            return;
        }
        let (t, d) = (i / hidden, i % hidden);
        let k = top_k as usize;
        let mut acc = 0.0f32;
        for s in 0..k {
            let row = row_of_pair.at(t * k + s) as usize;
            acc = fma(weights.at(t * k + s), expert_out.at(row * hidden + d), acc);
        }
        if has_shared != 0 {
            acc = fma(sigmoid(shared_gate.at(t)), shared_out.at(i), acc);
        }
        y.set(i, y.at(i) + acc);
    }
}

kernel! {
    /// The grouped GEMM's input: `xg[row] = x[sorted[row] / top_k]` (bf16 rows of `hidden`,
    /// moved as 32-bit pairs). Grid: one block per row (`n_rows` of them); any block size.
    pub fn moe_gather_rows(x: In<u16>, sorted: In<u32>, xg: Out<u16>, top_k: u32, hidden: u32) {
        let row = block_idx().x as usize;
        let words = hidden as usize / 2;
        let token = sorted.at(row) as usize / top_k as usize;
        let (src, dst) = (x.cast::<u32>(), xg.cast::<u32>());
        let mut i = thread_idx().x as usize;
        while i < words {
            dst.set(row * words + i, src.at(token * words + i));
            i += block_dim().x as usize;
        }
    }
}
