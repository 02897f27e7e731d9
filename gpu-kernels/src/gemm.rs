//! Tiled GEMMs: `y[r, n] = Σ_k x[src(r), k] · w[n, k]`, f32 activations, weights stored
//! `[out][in]` as in GGUF. bf16 weights go through one tensor-core tile routine (`mma_tile`:
//! dense + bias + residual, dense gated with SwiGLU in the epilogue, and the grouped MoE forms
//! that walk a tile table built by `moe::moe_group` and gather token rows); f32 weights (router,
//! shared-expert gate) through an FMA tile (`fma_tile`).
//!
//! Batch invariance: every output element is accumulated by one thread, in one register, in
//! ascending k order (tile by tile, then within the tile). Nothing about that order depends on
//! the number of rows, on which tile a row falls in, or on its neighbours; zero padding past
//! `k` depends on `k` alone. So a row's bits are the same whether it is computed alone, in a
//! batch, or inside any expert group.

use crate::device::float::f32_to_bf16;
use crate::device::math::{fma, silu};
use crate::device::*;

/// Rows (tokens) per block.
pub const TILE_M: usize = 64;
/// Output features per block.
pub const TILE_N: usize = 64;
const TILE_K: usize = 16;
/// Row stride of the transposed shared tiles: keeps 16-byte alignment, spreads the stores
/// over more banks.
const STRIDE: usize = TILE_M + 4;
/// Threads per block: 16 × 16, each owning a 4 × 4 patch of the 64 × 64 tile.
pub const THREADS: u32 = 256;

shared_array!(fn gemm_tile_x() -> [f32; 16 * 68]);
shared_array!(fn gemm_tile_w() -> [f32; 16 * 68]);

/// `x[idx..idx + 4]`, with elements at and beyond `valid` read as zero.
#[inline(always)]
fn load4(x: In<f32>, idx: usize, valid: usize) -> [f32; 4] {
    if valid >= 4 && idx.is_multiple_of(4) {
        return x.at4(idx);
    }
    core::array::from_fn(|i| if i < valid { x.at(idx + i) } else { 0.0 })
}

/// The rows a block computes: `first..end` of the output, reading activation row `src(r)`.
#[derive(Clone, Copy)]
struct Rows {
    first: usize,
    end: usize,
    /// For grouped MoE rows: (token, slot) pair ids; the activation row is `pair / gather_div`.
    pairs: In<u32>,
    gather_div: u32,
}

impl Rows {
    #[inline(always)]
    fn src(self, r: usize) -> usize {
        if self.gather_div == 0 {
            r
        } else {
            self.pairs.at(r) as usize / self.gather_div as usize
        }
    }
}

type Acc = [[f32; 4]; 4];

/// One 64 × 64 output tile at feature offset `n0` on CUDA cores, f32 throughout (the f32
/// weights: router and shared-expert gate): this thread's 4 × 4 accumulators.
/// Block: `THREADS` threads.
#[inline(always)]
fn fma_tile(x: In<f32>, w: In<f32>, rows: Rows, n0: usize, m: usize, k: usize) -> Acc {
    let tid = thread_idx().x as usize;
    let (xs, ws) = (gemm_tile_x(), gemm_tile_w());
    // Loading: thread → (row, 4 consecutive k) of both tiles. Computing: thread → 4 × 4 patch.
    let (load_row, load_k) = (tid / 4, (tid % 4) * 4);
    let (ty, tx) = (tid / 16, tid % 16);
    let r = rows.first + load_row;
    let x_base = if r < rows.end {
        Some(rows.src(r) * k)
    } else {
        None
    };
    let w_row = n0 + load_row;
    let mut acc = [[0.0f32; 4]; 4];
    let mut k0 = 0;
    while k0 < k {
        let kk = k0 + load_k;
        let valid = if kk < k { (k - kk).min(4) } else { 0 };
        let xv = match x_base {
            Some(base) => load4(x, base + kk, valid),
            None => [0.0; 4],
        };
        let wv = if w_row < m {
            load4(w, w_row * k + kk, valid)
        } else {
            [0.0; 4]
        };
        for i in 0..4 {
            xs.store((load_k + i) * STRIDE + load_row, xv[i]);
            ws.store((load_k + i) * STRIDE + load_row, wv[i]);
        }
        sync_threads();
        for kt in 0..TILE_K {
            let a = xs.load4(kt * STRIDE + ty * 4);
            let b = ws.load4(kt * STRIDE + tx * 4);
            for i in 0..4 {
                for j in 0..4 {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
            }
        }
        sync_threads();
        k0 += TILE_K;
    }
    acc
}

/// Calls `store(row, col, i, j)` for each of this thread's in-range outputs.
#[inline(always)]
fn for_each_output(
    rows: Rows,
    n0: usize,
    m: usize,
    mut store: impl FnMut(usize, usize, usize, usize),
) {
    let tid = thread_idx().x as usize;
    let (ty, tx) = (tid / 16, tid % 16);
    for i in 0..4 {
        let r = rows.first + ty * 4 + i;
        if r < rows.end {
            for j in 0..4 {
                let n = n0 + tx * 4 + j;
                if n < m {
                    store(r, n, i, j);
                }
            }
        }
    }
}

/// Threads of the tensor-core kernels: 4 warps, 2 × 2 over the 64 × 64 tile.
pub const MMA_THREADS: u32 = 128;
const MMA_K: usize = 32;
/// Row stride of the bf16-pair tiles in 32-bit words: 16 pairs of data + 4 of padding, so the
/// fragment loads of a warp (8 rows × 4 pairs) hit 32 different banks.
const PAIR_STRIDE: usize = MMA_K / 2 + 4;

shared_array!(fn mma_tile_x() -> [u32; 64 * 20]);
shared_array!(fn mma_tile_w() -> [u32; 64 * 20]);
shared_array!(fn mma_tile_w2() -> [u32; 64 * 20]);

#[inline(always)]
fn pack(lo: f32, hi: f32) -> u32 {
    f32_to_bf16(lo) as u32 | (f32_to_bf16(hi) as u32) << 16
}

/// 16 activations at `idx` as 8 bf16 pairs (zero at and past `valid`).
#[inline(always)]
fn load_x_pairs(x: In<f32>, idx: usize, valid: usize) -> [u32; 8] {
    let mut p = [0u32; 8];
    for q in 0..4 {
        let v = load4(x, idx + 4 * q, valid.saturating_sub(4 * q));
        p[2 * q] = pack(v[0], v[1]);
        p[2 * q + 1] = pack(v[2], v[3]);
    }
    p
}

/// 16 bf16 weights at `idx` as 8 pairs (zero at and past `valid`).
#[inline(always)]
fn load_w_pairs(w: In<u16>, idx: usize, valid: usize) -> [u32; 8] {
    if valid >= 16 && idx.is_multiple_of(8) {
        let pairs = w.cast::<u32>();
        let (a, b) = (pairs.at4(idx / 2), pairs.at4(idx / 2 + 4));
        return [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]];
    }
    core::array::from_fn(|q| {
        let lo = if 2 * q < valid {
            w.at(idx + 2 * q) as u32
        } else {
            0
        };
        let hi = if 2 * q + 1 < valid {
            w.at(idx + 2 * q + 1) as u32
        } else {
            0
        };
        lo | hi << 16
    })
}

/// This thread's accumulators: [m16 tile][n8 tile][fragment element].
type MmaAcc = [[[f32; 4]; 4]; 2];

/// One 64 × 64 output tile on tensor cores (`mma.sync` m16n8k16, bf16 in, f32 accumulate):
/// activations are rounded to bf16 when staged. Per output element the k order is fixed
/// (32-wide tiles in order, two k16 products each), so rows stay independent of N.
/// Block: `MMA_THREADS`.
#[inline(always)]
fn mma_tile<const GATED: bool>(
    x: In<f32>,
    wa: In<u16>,
    wb: In<u16>,
    rows: Rows,
    n0: usize,
    m: usize,
    k: usize,
) -> (MmaAcc, MmaAcc) {
    let tid = thread_idx().x as usize;
    let (xs, ws, ws2) = (mma_tile_x(), mma_tile_w(), mma_tile_w2());
    let (load_row, load_k) = (tid / 2, (tid % 2) * 16);
    let r = rows.first + load_row;
    let x_base = if r < rows.end {
        Some(rows.src(r) * k)
    } else {
        None
    };
    let w_row = n0 + load_row;
    let lane = lane_id() as usize;
    let (g, t) = (lane / 4, lane % 4);
    let warp = warp_id() as usize;
    let (wm, wn) = (warp / 2 * 32, warp % 2 * 32);
    let mut acc = [[[0.0f32; 4]; 4]; 2];
    let mut acc2 = [[[0.0f32; 4]; 4]; 2];
    let mut k0 = 0;
    while k0 < k {
        let kk = k0 + load_k;
        let valid = k.saturating_sub(kk).min(16);
        let xv = match x_base {
            Some(base) => load_x_pairs(x, base + kk, valid),
            None => [0; 8],
        };
        let wv = if w_row < m {
            load_w_pairs(wa, w_row * k + kk, valid)
        } else {
            [0; 8]
        };
        let at = load_row * PAIR_STRIDE + load_k / 2;
        xs.store4(at, [xv[0], xv[1], xv[2], xv[3]]);
        xs.store4(at + 4, [xv[4], xv[5], xv[6], xv[7]]);
        ws.store4(at, [wv[0], wv[1], wv[2], wv[3]]);
        ws.store4(at + 4, [wv[4], wv[5], wv[6], wv[7]]);
        if GATED {
            let wv2 = if w_row < m {
                load_w_pairs(wb, w_row * k + kk, valid)
            } else {
                [0; 8]
            };
            ws2.store4(at, [wv2[0], wv2[1], wv2[2], wv2[3]]);
            ws2.store4(at + 4, [wv2[4], wv2[5], wv2[6], wv2[7]]);
        }
        sync_threads();
        for ks in 0..MMA_K / 16 {
            let kw = ks * 8 + t;
            let a: [[u32; 4]; 2] = core::array::from_fn(|mi| {
                let r0 = (wm + mi * 16 + g) * PAIR_STRIDE + kw;
                let r8 = r0 + 8 * PAIR_STRIDE;
                [xs.load(r0), xs.load(r8), xs.load(r0 + 4), xs.load(r8 + 4)]
            });
            for ni in 0..4 {
                let nb = (wn + ni * 8 + g) * PAIR_STRIDE + kw;
                let b = [ws.load(nb), ws.load(nb + 4)];
                for mi in 0..2 {
                    acc[mi][ni] = mma_bf16_m16n8k16(a[mi], b, acc[mi][ni]);
                }
                if GATED {
                    let b2 = [ws2.load(nb), ws2.load(nb + 4)];
                    for mi in 0..2 {
                        acc2[mi][ni] = mma_bf16_m16n8k16(a[mi], b2, acc2[mi][ni]);
                    }
                }
            }
        }
        sync_threads();
        k0 += MMA_K;
    }
    (acc, acc2)
}

/// Calls `store(row, col, value, value2)` for this thread's in-range outputs of `mma_tile`.
#[inline(always)]
fn for_each_mma_output(
    rows: Rows,
    n0: usize,
    m: usize,
    acc: &MmaAcc,
    acc2: &MmaAcc,
    mut store: impl FnMut(usize, usize, f32, f32),
) {
    let lane = lane_id() as usize;
    let (g, t) = (lane / 4, lane % 4);
    let warp = warp_id() as usize;
    let (wm, wn) = (warp / 2 * 32, warp % 2 * 32);
    for mi in 0..2 {
        for ni in 0..4 {
            for e in 0..4 {
                let r = rows.first + wm + mi * 16 + g + 8 * (e / 2);
                let n = n0 + wn + ni * 8 + 2 * t + e % 2;
                if r < rows.end && n < m {
                    store(r, n, acc[mi][ni][e], acc2[mi][ni][e]);
                }
            }
        }
    }
}

#[inline(always)]
fn dense_rows(n_rows: u32, pairs: In<u32>) -> Rows {
    let first = block_idx().y as usize * TILE_M;
    Rows {
        first,
        end: (first + TILE_M).min(n_rows as usize),
        pairs,
        gather_div: 0,
    }
}

/// Flag bits of `gemm_bf16`.
pub const GEMM_ADD_BIAS: u32 = 1;
pub const GEMM_ADD_TO_Y: u32 = 2;

kernel! {
    /// `y[r, n] = (Σ_k x[r, k] · w[n, k]) [+ bias[n]] [+ y[r, n]]` (flags `GEMM_ADD_BIAS`,
    /// `GEMM_ADD_TO_Y`; the second fuses the residual add). Grid: (⌈m/64⌉, ⌈n_rows/64⌉).
    pub fn gemm_bf16(x: In<f32>, w: In<u16>, bias: In<f32>, y: Out<f32>, n_rows: u32, m: u32, k: u32, flags: u32) {
        let rows = dense_rows(n_rows, x.cast::<u32>());
        let n0 = block_idx().x as usize * TILE_N;
        let (m, k) = (m as usize, k as usize);
        let (acc, acc2) = mma_tile::<false>(x, w, w, rows, n0, m, k);
        for_each_mma_output(rows, n0, m, &acc, &acc2, |r, n, mut v, _| {
            if flags & GEMM_ADD_BIAS != 0 {
                v += bias.at(n);
            }
            if flags & GEMM_ADD_TO_Y != 0 {
                v += y.at(r * m + n);
            }
            y.set(r * m + n, v);
        });
    }
}

kernel! {
    /// `y = x · wᵀ` with f32 weights (the MoE router and the shared-expert gate stay f32).
    pub fn gemm_f32(x: In<f32>, w: In<f32>, y: Out<f32>, n_rows: u32, m: u32, k: u32) {
        let rows = dense_rows(n_rows, x.cast::<u32>());
        let n0 = block_idx().x as usize * TILE_N;
        let (m, k) = (m as usize, k as usize);
        let acc = fma_tile(x, w, rows, n0, m, k);
        for_each_output(rows, n0, m, |r, n, i, j| y.set(r * m + n, acc[i][j]));
    }
}

kernel! {
    /// `y = silu(x · w_gateᵀ) ⊙ (x · w_upᵀ)`: the gate and up projections of a dense FFN in
    /// one pass over `x`, SwiGLU fused into the epilogue.
    pub fn gemm_gated_bf16(x: In<f32>, w_gate: In<u16>, w_up: In<u16>, y: Out<f32>, n_rows: u32, m: u32, k: u32) {
        let rows = dense_rows(n_rows, x.cast::<u32>());
        let n0 = block_idx().x as usize * TILE_N;
        let (m, k) = (m as usize, k as usize);
        let (g, u) = mma_tile::<true>(x, w_gate, w_up, rows, n0, m, k);
        for_each_mma_output(rows, n0, m, &g, &u, |r, n, g, u| y.set(r * m + n, silu(g) * u));
    }
}

/// The grouped rows of tile `blockIdx.y`, or `None` past the table's end. `tiles` holds
/// (expert, first row) pairs; an expert's rows end at `offsets[expert + 1]`.
#[inline(always)]
fn grouped_rows(
    tiles: In<u32>,
    num_tiles: In<u32>,
    offsets: In<u32>,
    pairs: In<u32>,
    gather_div: u32,
) -> Option<(usize, Rows)> {
    let t = block_idx().y as usize;
    if t >= num_tiles.at(0) as usize {
        return None;
    }
    let expert = tiles.at(2 * t) as usize;
    let first = tiles.at(2 * t + 1) as usize;
    let end = (first + TILE_M).min(offsets.at(expert + 1) as usize);
    Some((
        expert,
        Rows {
            first,
            end,
            pairs,
            gather_div,
        },
    ))
}

kernel! {
    /// MoE gate/up for every expert in one launch: row `r` of the expert-grouped output reads
    /// token `pairs[r] / top_k`, and expert `e`'s weights `[e][m][k]`; SwiGLU fused.
    /// Grid: (⌈m/64⌉, max tiles); blocks past `num_tiles[0]` exit at once.
    pub fn moe_gemm_gated_bf16(
        x: In<f32>,
        w_gate: In<u16>,
        w_up: In<u16>,
        y: Out<f32>,
        pairs: In<u32>,
        tiles: In<u32>,
        num_tiles: In<u32>,
        offsets: In<u32>,
        top_k: u32,
        m: u32,
        k: u32
    ) {
        let Some((e, rows)) = grouped_rows(tiles, num_tiles, offsets, pairs, top_k) else {
            return;
        };
        let n0 = block_idx().x as usize * TILE_N;
        let (m, k) = (m as usize, k as usize);
        let (wg, wu) = (w_gate.offset(e * m * k), w_up.offset(e * m * k));
        let (g, u) = mma_tile::<true>(x, wg, wu, rows, n0, m, k);
        for_each_mma_output(rows, n0, m, &g, &u, |r, n, g, u| y.set(r * m + n, silu(g) * u));
    }
}

kernel! {
    /// MoE down projection for every expert in one launch, over the expert-grouped rows.
    pub fn moe_gemm_bf16(
        x: In<f32>,
        w: In<u16>,
        y: Out<f32>,
        tiles: In<u32>,
        num_tiles: In<u32>,
        offsets: In<u32>,
        m: u32,
        k: u32
    ) {
        let Some((e, rows)) = grouped_rows(tiles, num_tiles, offsets, tiles, 0) else {
            return;
        };
        let n0 = block_idx().x as usize * TILE_N;
        let (m, k) = (m as usize, k as usize);
        let (acc, acc2) = mma_tile::<false>(x, w.offset(e * m * k), w, rows, n0, m, k);
        for_each_mma_output(rows, n0, m, &acc, &acc2, |r, n, v, _| y.set(r * m + n, v));
    }
}
