//! The MoE routing stage after the router GEMM, for up to `FAST_MAX_EXPERTS` experts: softmax
//! and top-k per token from the router's partial logits, and the grouping of the (token, slot)
//! pairs by expert with the grouped GEMM's tile table, in two launches:
//!
//! - `moe_router_finish_*`: adds each token's partial logits (`moe::PartialLogits`) and
//!   routes it, a warp per token, `FINISH_TOKENS` tokens per block (few: the blocks spread
//!   over many multiprocessors); adds the token's choices into its `TILE_TOKENS`-token tile's
//!   per-expert pair counts (atomic adds of integers: the counts do not depend on their order).
//! - `moe_group_scan_place`: one block per tile of tokens: the scan over experts (parallel over
//!   experts), the tile's pairs placed by the block's warps, block 0 writes offsets and the
//!   tile table; the last block to have read the counts zeroes them for the next call.
//!
//! The partial logits come from the tensor-core GEMM (`gemm_wgmma_f32_segments`, launched by
//! the host's `ops::moe_router::Router`): the f32 router weights are stored as three bf16
//! matrices whose sum is exact (`float::split_bf16x3`, smallest part first), stacked
//! `[PARTS · n_expert]` rows, and multiplied with the bf16 normed rows over each `SEGMENT_K`
//! columns of the hidden state separately (a block per segment: at few tokens the router's
//! K = hidden is a long serial chain for few blocks otherwise). A bf16 × bf16 product is exact
//! in f32, so each partial is an f32 accumulation of exact products, and the partials are
//! added part by part (smallest first), each part's segments in order: the accuracy of an f32
//! GEMM of the bf16 rows by the f32 weights.
//!
//! Batch invariance: each partial logit is one accumulator of the wgmma GEMM, fed by the same
//! `wgmma` sequence over its segment whatever the number of tokens or the tile a token falls in
//! (see `gemm_wgmma`); the segments depend on the hidden size alone; the partials are added in
//! a fixed order by one thread. Routing is then one warp per token with fixed xor butterflies
//! (as `moe::moe_router_topk`), and the grouping only decides where a pair's row is stored:
//! stable by (expert, pair id), whatever the tiling.

use crate::device::math::exp;
use crate::device::*;
use crate::moe::{
    FLAG_RENORMALISE, FLAG_WRITE_LOGITS, GROUP_TILE_ROWS, PartialLogits, expert_bits, walk_pairs,
};

/// Partial logits per token and expert: the router weight's bf16 parts (lo, mid, hi).
pub const PARTS: usize = 3;
/// Hidden columns per K segment of the router GEMM (`gemm_wgmma_f32_segments`): each segment's
/// partial logits are summed by a block of their own, so few tokens still fill the GPU. A
/// function of the hidden size alone, never of the tokens (batch invariance). Measured on the
/// H200 at 30b dims (ncu, router GEMM + finish + scan/place, session 9): 1024 (two segments)
/// 29.2 µs at N = 512 and 46.3 at 4096; 512: 29.0 and 48.6; one segment: 32.9 and 42.3. The
/// finish kernel pays a round of loads per 16 partials, which at many tokens outweighs what the
/// GEMM gains.
pub const SEGMENT_K: usize = 1024;

/// Most experts of the fast path (eight per lane).
pub const FAST_MAX_EXPERTS: usize = 256;
/// Most experts a token may choose (one lane per slot).
pub const MAX_TOP_K: usize = WARP_SIZE as usize;
/// Tokens per grouping tile: a block of `moe_group_scan_place` each, and a row of per-expert
/// pair counts (every such block reads every tile's counts, so more, smaller tiles cost
/// quadratically: 16-token tiles measured +9 µs at N = 4096, session 9).
pub const TILE_TOKENS: usize = 32;
/// Tokens per finish block (a warp each): few, so a short prompt's tokens spread over many
/// multiprocessors (the routing of one token is a chain of dependent warp steps).
pub const FINISH_TOKENS: usize = 8;
/// Threads of `moe_router_finish_*`: a warp per token.
pub const FINISH_THREADS: u32 = FINISH_TOKENS as u32 * WARP_SIZE;
/// Threads of the scan-and-place kernel (one per expert).
pub const PLACE_THREADS: u32 = FAST_MAX_EXPERTS as u32;
/// Warps of the scan-and-place kernel, each placing a run of the tile's pairs.
const PLACE_WARPS: usize = PLACE_THREADS as usize / WARP_SIZE as usize;

shared_array!(fn place_running() -> [u32; PLACE_WARPS * FAST_MAX_EXPERTS]);
shared_array!(fn place_warp_sums() -> [u32; 16]);
shared_array!(fn place_last_block() -> [u32; 1]);

/// An order-preserving key of a router logit as `moe::better` ranks them (NaN as −∞, −0 as
/// +0): every logit's key is above 0, which marks an expert out of the running.
#[inline(always)]
pub fn logit_key(v: f32) -> u32 {
    // `+ 0.0` turns −0 into +0 (and leaves every other value as it is).
    let b = if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v + 0.0
    }
    .to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// The logit of a key (`logit_key`'s inverse on the values it makes).
#[inline(always)]
pub fn key_logit(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

/// One token's routing by its warp from this lane's logits `v` (experts `lane + 32 j`), as
/// `moe::moe_router_topk`: softmax, the top `k` logits (ties → lower id), optional
/// renormalisation. Lane `s < k` gets slot `s`'s (expert, weight). Full-warp call.
///
/// Each maximum is one `redux.sync.max` over order-preserving keys (`logit_key`), and the
/// lowest expert holding it comes from ballots in expert order: the choices, and the logits
/// the weights are computed from, are those of `moe::better`'s butterfly, at a fraction of its
/// five dependent shuffle rounds per slot.
#[inline(always)]
fn route_token<const EPL: usize>(v: [f32; EPL], ne: usize, k: usize, renorm: bool) -> (u32, f32) {
    let lane = lane_id() as usize;
    let valid = |j: usize| lane + 32 * j < ne;
    let keys: [u32; EPL] = core::array::from_fn(|j| if valid(j) { logit_key(v[j]) } else { 0 });
    let m = key_logit(warp_max_u32(keys.iter().copied().max().unwrap_or(0)));
    let mut sum = 0.0f32;
    for (j, &vj) in v.iter().enumerate() {
        if valid(j) {
            sum += exp(vj - m);
        }
    }
    let sum = warp_sum_f32(sum);
    let (mut taken, mut total, mut chosen, mut chosen_p) = (0u32, 0.0f32, 0u32, 0.0f32);
    for s in 0..k {
        let open = |j: usize| taken & (1 << j) == 0;
        let mut mine = 0;
        for (j, &key) in keys.iter().enumerate() {
            if open(j) {
                mine = mine.max(key);
            }
        }
        let best = warp_max_u32(mine);
        // The lowest id holding it: experts are `lane + 32 j`, so the lowest j, then lane.
        let mut id = u32::MAX;
        for (j, &key) in keys.iter().enumerate() {
            let hit = ballot(best > 0 && open(j) && key == best);
            if id == u32::MAX && hit != 0 {
                id = 32 * j as u32 + hit.trailing_zeros();
            }
        }
        if id as usize % 32 == lane {
            taken |= 1 << (id / 32);
        }
        let prob = exp(key_logit(best) - m) / sum;
        if s == lane {
            (chosen, chosen_p) = (id, prob);
        }
        total += prob;
    }
    let p = if renorm { chosen_p / total } else { chosen_p };
    (chosen, p)
}

/// Warp `w` of block `b` routes token `b · FINISH_TOKENS + w` (`EPL` experts per lane) and
/// adds its choices into `tile_counts[tile][e]`, its tile's pairs routed to expert `e`
/// (zero before the launch: `moe_group_scan_place` leaves them so).
#[inline(always)]
fn router_finish<const EPL: usize>(
    partials: PartialLogits,
    (ids, weights, logits, tile_counts): (Out<u32>, Out<f32>, Out<f32>, Out<u32>),
    (k, flags): (usize, u32),
) {
    let (n, ne) = (partials.n_tokens, partials.n_expert);
    let (w, lane) = (warp_id() as usize, lane_id() as usize);
    let t = block_idx().x as usize * FINISH_TOKENS + w;
    if t >= n {
        return;
    }
    let v: [f32; EPL] = partials.lane_logits::<EPL>(t, lane);
    if flags & FLAG_WRITE_LOGITS != 0 {
        for (j, &x) in v.iter().enumerate() {
            if lane + 32 * j < ne {
                logits.set(t * ne + lane + 32 * j, x);
            }
        }
    }
    let (id, weight) = route_token::<EPL>(v, ne, k, flags & FLAG_RENORMALISE != 0);
    if lane < k {
        ids.set(t * k + lane, id);
        weights.set(t * k + lane, weight);
        if (id as usize) < ne {
            atomic_add_u32(tile_counts, (t / TILE_TOKENS) * ne + id as usize, 1);
        }
    }
}

macro_rules! finish_kernel {
    ($finish:ident, $epl:literal) => {
        kernel! {
            threads = FINISH_THREADS;
            /// Adds each token's partial logits (`[segments][t][PARTS][n_expert]`, in the order
            /// of `moe::PartialLogits`) and routes it, for `n_expert ≤ 32 · EPL`: `ids[t][s]`, `weights[t][s]`
            /// in selection order, `logits` `[t][n_expert]` with `FLAG_WRITE_LOGITS`, and adds
            /// into `tile_counts[tile][e]` (zero before). Block `FINISH_THREADS` (a warp per
            /// token), grid `⌈n / FINISH_TOKENS⌉`.
            pub fn $finish(
                partials: In<f32>,
                ids: Out<u32>,
                weights: Out<f32>,
                logits: Out<f32>,
                tile_counts: Out<u32>,
                n_tokens: u32,
                n_expert: u32,
                top_k: u32,
                segments: u32,
                flags: u32
            ) {
                let out = (ids, weights, logits, tile_counts);
                let partials = PartialLogits {
                    partials,
                    n_tokens: n_tokens as usize,
                    n_expert: n_expert as usize,
                    parts: PARTS,
                    segments: segments as usize,
                };
                router_finish::<$epl>(partials, out, (top_k as usize, flags));
            }
        }
    };
}

// Lane `l` holds experts `l + 32 j`, `j < EPL`: 4 up to 128 experts, 8 up to
// `FAST_MAX_EXPERTS` (the host picks by the expert count).
finish_kernel!(moe_router_finish_e128, 4);
finish_kernel!(moe_router_finish_e256, 8);

/// Sum over tiles `0..n_tiles` of `tile_counts[c][e]`, and the same over the tiles before
/// `tile`: four loads in flight per step (a loop of dependent-looking adds left one).
#[inline(always)]
fn expert_rows(
    tile_counts: In<u32>,
    (tile, n_tiles): (usize, usize),
    ne: usize,
    e: usize,
) -> (u32, u32) {
    let (mut before, mut rows) = (0u32, 0u32);
    let mut c = 0;
    while c < n_tiles {
        let counts: [u32; 4] = core::array::from_fn(|i| {
            if c + i < n_tiles {
                tile_counts.at((c + i) * ne + e)
            } else {
                0
            }
        });
        for (i, &count) in counts.iter().enumerate() {
            if c + i < tile {
                before += count;
            }
            rows += count;
        }
        c += 4;
    }
    (before, rows)
}

kernel! {
    /// The grouping in one launch, one block (`PLACE_THREADS`, thread = expert) per tile of
    /// `tile_pairs` pairs: from `tile_counts[tile][e]`, each expert's first row (a parallel
    /// exclusive scan over experts) plus the earlier tiles' rows of that expert; then the
    /// block's warps place the tile's pairs in pair order, each warp a run of them after
    /// counting them (the warps' counts scanned in warp order): `sorted[row] = pair`,
    /// `row_of_pair[pair] = row`. Block 0 also writes `offsets[e]` (`offsets[n_expert]` =
    /// pairs), the grouped GEMM's tile table (`tiles[2t] = expert`, `tiles[2t + 1] = first
    /// row`) and `num_tiles[0]`. The last block to have read the counts (`blocks_done[0]`
    /// counts them, and is left 0) zeroes them, so the next call's finish kernel adds into
    /// zeros.
    pub fn moe_group_scan_place(
        ids: In<u32>,
        tile_counts: Out<u32>,
        blocks_done: Out<u32>,
        sorted: Out<u32>,
        row_of_pair: Out<u32>,
        offsets: Out<u32>,
        tiles: Out<u32>,
        num_tiles: Out<u32>,
        n_pairs: u32,
        n_expert: u32,
        tile_pairs: u32
    ) {
        let (tile, n_tiles) = (block_idx().x as usize, grid_dim().x as usize);
        let (ne, e) = (n_expert as usize, thread_idx().x as usize);
        let (before, rows) = if e < ne {
            expert_rows(tile_counts.as_in(), (tile, n_tiles), ne, e)
        } else {
            (0, 0)
        };
        let group_tiles = rows.div_ceil(GROUP_TILE_ROWS as u32);
        // Inclusive scans within each warp, then over the warps' totals.
        let (warp, lane) = (warp_id() as usize, lane_id());
        let (mut rows_in, mut tiles_in) = (rows, group_tiles);
        let mut d = 1;
        while d < WARP_SIZE {
            let src = (lane + WARP_SIZE - d) % WARP_SIZE;
            let (r, t) = (shfl_idx_u32(rows_in, src), shfl_idx_u32(tiles_in, src));
            if lane >= d {
                rows_in += r;
                tiles_in += t;
            }
            d *= 2;
        }
        let sums = place_warp_sums();
        if lane == WARP_SIZE - 1 {
            sums.store(2 * warp, rows_in);
            sums.store(2 * warp + 1, tiles_in);
        }
        // The warps' pair runs: `PLACE_WARPS` runs of whole rounds.
        let first = tile * tile_pairs as usize;
        let end = (first + tile_pairs as usize).min(n_pairs as usize);
        let run = (end - first).div_ceil(PLACE_WARPS * 32) * 32;
        let mine = ((first + warp * run).min(end), (first + (warp + 1) * run).min(end));
        let running = place_running().offset(warp * FAST_MAX_EXPERTS);
        let mut i = lane as usize;
        while i < ne {
            running.store(i, 0);
            i += WARP_SIZE as usize;
        }
        sync_warp();
        let bits = expert_bits(ne);
        walk_pairs(ids, mine, bits, running, None);
        sync_threads();
        // Every thread of this block has read its counts (the barrier); the fence orders
        // those reads before the ticket, so the block that takes the last one may zero them.
        if e == 0 {
            threadfence();
            let ticket = atomic_add_u32(blocks_done, 0, 1);
            place_last_block().store(0, (ticket as usize == n_tiles - 1) as u32);
        }
        for w in 0..warp {
            rows_in += sums.load(2 * w);
            tiles_in += sums.load(2 * w + 1);
        }
        let (first_row, first_tile) = (rows_in - rows, tiles_in - group_tiles);
        if e < ne {
            let mut row = first_row + before;
            for w in 0..PLACE_WARPS {
                let slot = w * FAST_MAX_EXPERTS + e;
                let count = place_running().load(slot);
                place_running().store(slot, row);
                row += count;
            }
            if tile == 0 {
                offsets.set(e, first_row);
                for i in 0..group_tiles {
                    let t = (first_tile + i) as usize;
                    tiles.set(2 * t, e as u32);
                    tiles.set(2 * t + 1, first_row + i * GROUP_TILE_ROWS as u32);
                }
                if e == ne - 1 {
                    offsets.set(ne, rows_in);
                    num_tiles.set(0, tiles_in);
                }
            }
        }
        sync_threads();
        walk_pairs(ids, mine, bits, running, Some((sorted, row_of_pair)));
        if place_last_block().load(0) == 1 {
            let mut i = e;
            while i < n_tiles * ne {
                tile_counts.set(i, 0);
                i += PLACE_THREADS as usize;
            }
            if e == 0 {
                blocks_done.set(0, 0);
            }
        }
    }
}
