//! The MoE routing stage for up to `FAST_MAX_EXPERTS` experts (hidden a multiple of 4): router
//! logits `x[n][h] · W[ne][h]ᵀ` in f32 on CUDA cores, softmax and top-k per token, and the
//! grouping of the (token, slot) pairs by expert with the grouped GEMM's tile table, in three
//! launches (split) or two (fused):
//!
//! - `moe_router_gemm_*`: a block takes a tile of `tile_tokens(ne)` tokens × every expert and
//!   streams K through shared memory (`cp.async`, `STAGES` deep). Split: grid `(tiles,
//!   K_SEGMENTS)`, block `(tile, s)` writes segment `s`'s partial logits. Fused: grid
//!   `(tiles, 1)`, the block walks all segments and routes its tokens itself.
//! - `moe_router_finish_*` (split only): adds each token's partials and routes it, a warp
//!   per token.
//! - `moe_group_scan_place`: one block per tile of tokens: the scan over experts (parallel over
//!   experts), the tile's pairs placed, block 0 writes offsets and the tile table.
//!
//! Routing and counting sit in one function (`route_tile`) used by the fused GEMM and the
//! finish kernel, so both modes give the same ids, weights and per-tile counts.
//!
//! Batch invariance: K is cut into `K_SEGMENTS` fixed segments of `segment_len(h)` (a function
//! of `h` alone). Each segment's partial logit is accumulated by one thread with `fma`, from
//! 0.0, in ascending k; zero padding past `h` depends on `h` alone. The logit is
//! `(((0 + p₀) + p₁) + …) + p₇`, whether the fused block folds its own segments or the finish
//! kernel adds the split blocks' partials. Nothing in that arithmetic depends on the number of
//! tokens, the tile a token falls in, its neighbours or the mode. Routing is then one warp per
//! token with fixed xor butterflies (as `moe::moe_router_topk`), and the grouping only decides
//! where a pair's row is stored: stable by (expert, pair id), whatever the tiling.

use crate::device::async_copy::{cp_async_16, cp_async_commit, cp_async_wait};
use crate::device::math::{exp, fma, max};
use crate::device::*;
use crate::moe::{GROUP_TILE_ROWS, better, expert_bits, walk_pairs};

/// Fixed K segments of every logit (their sums are added in this order).
pub const K_SEGMENTS: usize = 8;
/// K elements per pipeline stage.
pub const K_TILE: usize = 16;
/// Words per staged row: 16 data + 4 pad, so the eight 16-byte reads of a quarter warp (rows
/// `l, l + 1, …`) fall in distinct bank groups (5·l mod 8).
const ROW: usize = K_TILE + 4;
/// `cp.async` pipeline depth (tiles in flight).
const STAGES: usize = 4;
/// Warps per block of the router kernels.
pub const WARPS: usize = 4;
pub const THREADS: u32 = (WARPS * WARP_SIZE as usize) as u32;
/// Most experts of the fast path (eight per lane).
pub const FAST_MAX_EXPERTS: usize = 256;
/// Most experts a token may choose (one lane per slot).
pub const MAX_TOP_K: usize = WARP_SIZE as usize;
/// Threads of the scan-and-place kernel (one per expert).
pub const PLACE_THREADS: u32 = FAST_MAX_EXPERTS as u32;
/// Routing flags.
pub const FLAG_RENORMALISE: u32 = 1;
pub const FLAG_WRITE_LOGITS: u32 = 2;
pub const FLAG_FUSED: u32 = 4;

/// Elements of K per segment: ⌈h / K_SEGMENTS⌉ rounded up to the tile (depends on `h` alone).
pub const fn segment_len(h: usize) -> usize {
    h.div_ceil(K_SEGMENTS).div_ceil(K_TILE) * K_TILE
}

/// Experts per lane: lane `l` holds experts `l + 32 j`, `j < experts_per_lane`.
pub const fn experts_per_lane(n_expert: usize) -> usize {
    if n_expert <= 128 { 4 } else { 8 }
}

/// Threads of `moe_router_finish_*` for `n_expert` experts: a warp per token of the tile.
pub const fn finish_threads(n_expert: usize) -> u32 {
    (tile_tokens(n_expert) * WARP_SIZE as usize) as u32
}

/// Tokens per block (and per grouping tile): each warp owns `32 / experts_per_lane` tokens, so
/// every thread keeps 32 accumulators whatever the expert count.
pub const fn tile_tokens(n_expert: usize) -> usize {
    WARPS * (WARP_SIZE as usize / experts_per_lane(n_expert))
}

/// Dynamic shared memory of `moe_router_gemm_*`: `STAGES` × (token rows + expert rows).
pub const fn gemm_shared_bytes(n_expert: usize) -> u32 {
    let rows = tile_tokens(n_expert) + WARP_SIZE as usize * experts_per_lane(n_expert);
    (STAGES * rows * ROW * 4) as u32
}

// Each tile's chosen ids, for counting (tile tokens ≤ 32, top-k ≤ 32).
shared_array!(fn router_tile_ids() -> [u32; 1024]);
shared_array!(fn place_running() -> [u32; 256]);
shared_array!(fn place_warp_sums() -> [u32; 16]);

/// 16 bytes from `src[si..]` to `dst[di..]` through `cp.async` (zeros when `!valid`).
#[inline(always)]
fn copy16(dst: Shared<f32>, di: usize, src: In<f32>, si: usize, valid: bool) {
    cp_async_16(dst.offset(di).addr(), src, si, valid);
}

/// Waits until at most `STAGES - 2` of this thread's groups are in flight (`ALL`: none).
#[inline(always)]
fn wait_copies<const ALL: bool>() {
    if ALL {
        cp_async_wait::<0>();
    } else {
        cp_async_wait::<{ STAGES as u32 - 2 }>();
    }
}

/// The sizes every router kernel shares.
#[derive(Clone, Copy)]
struct Problem {
    n: usize,
    ne: usize,
    h: usize,
    k: usize,
    flags: u32,
}

impl Problem {
    fn new(n: u32, ne: u32, h: u32, k: u32, flags: u32) -> Self {
        let (n, ne, h, k) = (n as usize, ne as usize, h as usize, k as usize);
        Problem { n, ne, h, k, flags }
    }
}

/// This thread's logits (or partials) of a tile: `[token of the warp][expert slot of the lane]`.
type Acc<const TPW: usize, const EPL: usize> = [[f32; EPL]; TPW];

/// Segments `segs.0..segs.1` of the logits of tile `tile` (`TPW` tokens per warp, `EPL`
/// experts per lane): each segment accumulated from 0.0 in ascending k, then folded left to
/// right onto 0.0 (one segment: its partial as is).
#[inline(always)]
fn gemm_tile<const TPW: usize, const EPL: usize>(
    x: In<f32>,
    w: In<f32>,
    p: Problem,
    tile: usize,
    segs: (usize, usize),
) -> Acc<TPW, EPL> {
    let tm = WARPS * TPW;
    let rows = tm + WARP_SIZE as usize * EPL;
    let len = segment_len(p.h);
    let (kb, ke) = ((segs.0 * len).min(p.h), (segs.1 * len).min(p.h));
    let n_tiles = (ke - kb).div_ceil(K_TILE);
    let smem = dynamic_shared::<f32>(STAGES * rows * ROW);
    let stage = |t: usize| smem.offset((t % STAGES) * rows * ROW);
    let tid = thread_idx().x as usize;
    // Row r < tm: token `tile·tm + r`; else expert `r − tm`. Tiles never straddle a segment
    // (segments are whole tiles), and h % 4 == 0, so a 16-byte chunk is all in or all out.
    let issue = |t: usize| {
        let (k0, dst) = (kb + t * K_TILE, stage(t));
        let mut c = tid;
        while c < rows * (K_TILE / 4) {
            let (r, kk) = (c / (K_TILE / 4), k0 + (c % (K_TILE / 4)) * 4);
            let di = r * ROW + (kk - k0);
            if r < tm {
                let token = tile * tm + r;
                copy16(dst, di, x, token * p.h + kk, kk < ke && token < p.n);
            } else {
                let e = r - tm;
                copy16(dst, di, w, e * p.h + kk, kk < ke && e < p.ne);
            }
            c += THREADS as usize;
        }
    };
    let (warp, lane) = (warp_id() as usize, lane_id() as usize);
    let mut acc = [[0.0f32; EPL]; TPW];
    let mut total = [[0.0f32; EPL]; TPW];
    let fused = segs.1 - segs.0 > 1;
    let mut fold = |acc: &mut Acc<TPW, EPL>| {
        for i in 0..TPW {
            for j in 0..EPL {
                total[i][j] = if fused {
                    total[i][j] + acc[i][j]
                } else {
                    acc[i][j]
                };
                acc[i][j] = 0.0;
            }
        }
    };
    for t in 0..STAGES - 1 {
        if t < n_tiles {
            issue(t);
        }
        cp_async_commit();
    }
    let mut seg = segs.0;
    for t in 0..n_tiles {
        wait_copies::<false>();
        // Tile t has landed for every thread, and every warp is done with tile t − 1, whose
        // stage the next issue overwrites.
        sync_threads();
        if t + STAGES - 1 < n_tiles {
            issue(t + STAGES - 1);
        }
        cp_async_commit();
        while (kb + t * K_TILE) / len > seg {
            fold(&mut acc);
            seg += 1;
        }
        let st = stage(t);
        let ws = st.offset(tm * ROW);
        for kq in 0..K_TILE / 4 {
            let xv: [[f32; 4]; TPW] =
                core::array::from_fn(|i| st.load4((warp * TPW + i) * ROW + kq * 4));
            let wv: [[f32; 4]; EPL] =
                core::array::from_fn(|j| ws.load4((lane + 32 * j) * ROW + kq * 4));
            for kk in 0..4 {
                for i in 0..TPW {
                    for j in 0..EPL {
                        acc[i][j] = fma(xv[i][kk], wv[j][kk], acc[i][j]);
                    }
                }
            }
        }
    }
    wait_copies::<true>();
    while seg < segs.1 {
        fold(&mut acc);
        seg += 1;
    }
    total
}

/// One token's routing by its warp from this lane's logits `v` (experts `lane + 32 j`), as
/// `moe::moe_router_topk`: softmax, the top `k` logits (ties → lower id), optional
/// renormalisation. Lane `s < k` gets slot `s`'s (expert, weight). Full-warp call.
#[inline(always)]
fn route_token<const EPL: usize>(v: [f32; EPL], ne: usize, k: usize, renorm: bool) -> (u32, f32) {
    let lane = lane_id() as usize;
    let valid = |j: usize| lane + 32 * j < ne;
    let mut m = f32::NEG_INFINITY;
    for (j, &vj) in v.iter().enumerate() {
        if valid(j) {
            m = max(m, vj);
        }
    }
    let m = warp_max_f32(m);
    let mut sum = 0.0f32;
    for (j, &vj) in v.iter().enumerate() {
        if valid(j) {
            sum += exp(vj - m);
        }
    }
    let sum = warp_sum_f32(sum);
    let (mut taken, mut total, mut chosen, mut chosen_p) = (0u32, 0.0f32, 0u32, 0.0f32);
    for s in 0..k {
        let mut best = (f32::NEG_INFINITY, u32::MAX);
        for (j, &vj) in v.iter().enumerate() {
            if valid(j) && taken & (1 << j) == 0 {
                best = better(best, (vj, (lane + 32 * j) as u32));
            }
        }
        let mut mask = 16;
        while mask > 0 {
            let other = (shfl_xor_f32(best.0, mask), shfl_xor_u32(best.1, mask));
            best = better(best, other);
            mask >>= 1;
        }
        if best.1 as usize % 32 == lane {
            taken |= 1 << (best.1 / 32);
        }
        let prob = exp(best.0 - m) / sum;
        if s == lane {
            (chosen, chosen_p) = (best.1, prob);
        }
        total += prob;
    }
    let p = if renorm { chosen_p / total } else { chosen_p };
    (chosen, p)
}

/// The routing outputs.
#[derive(Clone, Copy)]
struct Outputs {
    ids: Out<u32>,
    weights: Out<f32>,
    logits: Out<f32>,
    tile_counts: Out<u32>,
}

/// Routes the tile's tokens, `logit(r, j)` being tile row `r`'s logit of expert
/// `lane + 32 j` (called for this warp's rows only), and writes `tile_counts[tile][e]`: the
/// tile's pairs routed to expert `e`. The block's warps share the tile's rows evenly (the
/// GEMM's `WARPS` warps take `TPW` rows each; the finish kernel has a warp per row, since
/// routing a token is a chain of dependent shuffles that one warp cannot overlap). The rows
/// are walked in a loop (not unrolled) so the logits stay where they are instead of in a
/// dynamically indexed local array.
#[inline(always)]
fn route_tile<const TPW: usize, const EPL: usize>(
    logit: impl Fn(usize, usize) -> f32,
    p: Problem,
    tile: usize,
    out: Outputs,
) {
    let tm = WARPS * TPW;
    let (warp, lane) = (warp_id() as usize, lane_id() as usize);
    let per_warp = tm / (block_dim().x / WARP_SIZE) as usize;
    let tile_ids = router_tile_ids();
    let rows = p.n.min((tile + 1) * tm) - tile * tm;
    let mut r = warp * per_warp;
    while r < rows.min((warp + 1) * per_warp) {
        let t = tile * tm + r;
        let v: [f32; EPL] = core::array::from_fn(|j| logit(r, j));
        if p.flags & FLAG_WRITE_LOGITS != 0 {
            for (j, &x) in v.iter().enumerate() {
                if lane + 32 * j < p.ne {
                    out.logits.set(t * p.ne + lane + 32 * j, x);
                }
            }
        }
        let renorm = p.flags & FLAG_RENORMALISE != 0;
        let (id, weight) = route_token::<EPL>(v, p.ne, p.k, renorm);
        if lane < p.k {
            out.ids.set(t * p.k + lane, id);
            out.weights.set(t * p.k + lane, weight);
            tile_ids.store(r * p.k + lane, id);
        }
        r += 1;
    }
    sync_threads();
    let pairs = rows * p.k;
    let mut e = thread_idx().x as usize;
    while e < p.ne {
        let mut count = 0;
        for q in 0..pairs {
            count += (tile_ids.load(q) as usize == e) as u32;
        }
        out.tile_counts.set(tile * p.ne + e, count);
        e += block_dim().x as usize;
    }
}

/// The router GEMM (see the module doc): split writes `partials[s][t][e]`; fused routes.
#[inline(always)]
fn router_gemm<const TPW: usize, const EPL: usize>(
    x: In<f32>,
    w: In<f32>,
    partials: Out<f32>,
    out: Outputs,
    p: Problem,
) {
    let tile = block_idx().x as usize;
    let (warp, lane) = (warp_id() as usize, lane_id() as usize);
    if p.flags & FLAG_FUSED != 0 {
        let v = gemm_tile::<TPW, EPL>(x, w, p, tile, (0, K_SEGMENTS));
        // Through shared memory (the pipeline's, free once every warp is done with it), so
        // the routing loop reads row r's logits by address rather than a register by index.
        let stride = WARP_SIZE as usize * EPL;
        let staged = dynamic_shared::<f32>(WARPS * TPW * stride);
        sync_threads();
        for (i, vi) in v.iter().enumerate() {
            for (j, &x) in vi.iter().enumerate() {
                staged.store((warp * TPW + i) * stride + lane + 32 * j, x);
            }
        }
        sync_warp();
        let logit = |r: usize, j: usize| staged.load(r * stride + lane + 32 * j);
        route_tile::<TPW, EPL>(logit, p, tile, out);
        return;
    }
    let s = block_idx().y as usize;
    let v = gemm_tile::<TPW, EPL>(x, w, p, tile, (s, s + 1));
    for (i, vi) in v.iter().enumerate() {
        let t = tile * WARPS * TPW + warp * TPW + i;
        for (j, &x) in vi.iter().enumerate() {
            let e = lane + 32 * j;
            if t < p.n && e < p.ne {
                partials.set((s * p.n + t) * p.ne + e, x);
            }
        }
    }
}

/// The split mode's second step: each logit is `(((0 + p₀) + p₁) + …)`, then `route_tile`.
#[inline(always)]
fn router_finish<const TPW: usize, const EPL: usize>(partials: In<f32>, out: Outputs, p: Problem) {
    let tile = block_idx().x as usize;
    let lane = lane_id() as usize;
    let logit = |r: usize, j: usize| {
        let (t, e) = (tile * WARPS * TPW + r, lane + 32 * j);
        let mut sum = 0.0f32;
        if e < p.ne {
            for s in 0..K_SEGMENTS {
                sum += partials.at((s * p.n + t) * p.ne + e);
            }
        }
        sum
    };
    route_tile::<TPW, EPL>(logit, p, tile, out);
}

macro_rules! router_kernels {
    ($gemm:ident, $finish:ident, $tpw:literal, $epl:literal) => {
        kernel! {
            /// The router GEMM for `n_expert ≤ 32 · EPL` (see the module doc). Block:
            /// `THREADS`, dynamic shared memory `gemm_shared_bytes(n_expert)`; grid
            /// `(⌈n / tile_tokens⌉, K_SEGMENTS)` (split: writes `partials[s][t][e]`) or
            /// `(⌈n / tile_tokens⌉, 1)` with `FLAG_FUSED` (routes: as `moe_router_finish_*`).
            pub fn $gemm(
                x: In<f32>,
                w: In<f32>,
                partials: Out<f32>,
                ids: Out<u32>,
                weights: Out<f32>,
                logits: Out<f32>,
                tile_counts: Out<u32>,
                n_tokens: u32,
                n_expert: u32,
                hidden: u32,
                top_k: u32,
                flags: u32
            ) {
                let p = Problem::new(n_tokens, n_expert, hidden, top_k, flags);
                let out = Outputs { ids, weights, logits, tile_counts };
                router_gemm::<$tpw, $epl>(x, w, partials, out, p);
            }
        }

        kernel! {
            /// Adds the split router GEMM's partials in segment order and routes each token:
            /// `ids[t][s]`, `weights[t][s]` in selection order, `logits` with
            /// `FLAG_WRITE_LOGITS`, and `tile_counts[tile][e]`. Block
            /// `finish_threads(n_expert)` (a warp per token), grid `⌈n / tile_tokens⌉`.
            pub fn $finish(
                partials: In<f32>,
                ids: Out<u32>,
                weights: Out<f32>,
                logits: Out<f32>,
                tile_counts: Out<u32>,
                n_tokens: u32,
                n_expert: u32,
                top_k: u32,
                flags: u32
            ) {
                let p = Problem::new(n_tokens, n_expert, 0, top_k, flags);
                let out = Outputs { ids, weights, logits, tile_counts };
                router_finish::<$tpw, $epl>(partials, out, p);
            }
        }
    };
}

router_kernels!(moe_router_gemm_e128, moe_router_finish_e128, 8, 4);
router_kernels!(moe_router_gemm_e256, moe_router_finish_e256, 4, 8);

kernel! {
    /// The grouping in one launch, one block (`PLACE_THREADS`, thread = expert) per tile of
    /// `tile_pairs` pairs: from `tile_counts[tile][e]`, each expert's first row (a parallel
    /// exclusive scan over experts) plus the earlier tiles' rows of that expert; then one warp
    /// places the tile's pairs in pair order: `sorted[row] = pair`, `row_of_pair[pair] = row`.
    /// Block 0 also writes `offsets[e]` (`offsets[n_expert]` = pairs), the grouped GEMM's tile
    /// table (`tiles[2t] = expert`, `tiles[2t + 1] = first row`) and `num_tiles[0]`.
    pub fn moe_group_scan_place(
        ids: In<u32>,
        tile_counts: In<u32>,
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
        let (mut before, mut rows) = (0u32, 0u32);
        if e < ne {
            for c in 0..n_tiles {
                let count = tile_counts.at(c * ne + e);
                if c < tile {
                    before += count;
                }
                rows += count;
            }
        }
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
        sync_threads();
        for w in 0..warp {
            rows_in += sums.load(2 * w);
            tiles_in += sums.load(2 * w + 1);
        }
        let (first_row, first_tile) = (rows_in - rows, tiles_in - group_tiles);
        let running = place_running();
        if e < ne {
            running.store(e, first_row + before);
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
        if warp == 0 {
            let first = tile * tile_pairs as usize;
            let end = (first + tile_pairs as usize).min(n_pairs as usize);
            walk_pairs(ids, (first, end), expert_bits(ne), running, Some((sorted, row_of_pair)));
        }
    }
}
