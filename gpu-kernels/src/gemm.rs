//! Tiled GEMMs on CUDA cores: `y[r, n] = Σ_k x[src(r), k] · w[n, k]`, with f32 activations and
//! bf16 (or f32) weights stored `[out][in]` as in GGUF. Variants, all from one tile routine:
//! dense (+ bias, + residual), dense gated (SwiGLU fused into the epilogue), and the grouped
//! MoE forms that walk a tile table built by `moe::moe_group` and gather token rows.
//!
//! Batch invariance: every output element is accumulated by one thread, in one register, in
//! ascending k order (tile by tile, then within the tile), with one fused multiply-add per k.
//! Nothing about that order depends on the number of rows, on which tile a row falls in, or on
//! its neighbours; zero padding past `k` depends on `k` alone. So a row's bits are the same
//! whether it is computed alone, in a batch, or inside any expert group.

use crate::device::float::bf16_to_f32;
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
shared_array!(fn gemm_tile_w2() -> [f32; 16 * 68]);

/// A weight storage type, widened to f32 four at a time.
pub trait Weight: Copy {
    /// `w[idx..idx + 4]`, with elements at and beyond `valid` read as zero.
    fn load4(w: In<Self>, idx: usize, valid: usize) -> [f32; 4];
}

impl Weight for f32 {
    #[inline(always)]
    fn load4(w: In<f32>, idx: usize, valid: usize) -> [f32; 4] {
        if valid >= 4 && idx.is_multiple_of(4) {
            return w.at4(idx);
        }
        core::array::from_fn(|i| if i < valid { w.at(idx + i) } else { 0.0 })
    }
}

/// bf16 bits.
impl Weight for u16 {
    #[inline(always)]
    fn load4(w: In<u16>, idx: usize, valid: usize) -> [f32; 4] {
        if valid >= 4 && idx.is_multiple_of(2) {
            let pairs = w.cast::<u32>();
            let (a, b) = (pairs.at(idx / 2), pairs.at(idx / 2 + 1));
            return [
                bf16_to_f32(a as u16),
                bf16_to_f32((a >> 16) as u16),
                bf16_to_f32(b as u16),
                bf16_to_f32((b >> 16) as u16),
            ];
        }
        core::array::from_fn(|i| {
            if i < valid {
                bf16_to_f32(w.at(idx + i))
            } else {
                0.0
            }
        })
    }
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

/// One 64 × 64 output tile at feature offset `n0`: returns this thread's accumulators for
/// `wa` and (when `GATED`) `wb`. Block: `THREADS` threads.
#[inline(always)]
fn gemm_tile<W: Weight, const GATED: bool>(
    x: In<f32>,
    wa: In<W>,
    wb: In<W>,
    rows: Rows,
    n0: usize,
    m: usize,
    k: usize,
) -> (Acc, Acc) {
    let tid = thread_idx().x as usize;
    let (xs, ws, ws2) = (gemm_tile_x(), gemm_tile_w(), gemm_tile_w2());
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
    let mut acc2 = [[0.0f32; 4]; 4];
    let mut k0 = 0;
    while k0 < k {
        let kk = k0 + load_k;
        let valid = if kk < k { (k - kk).min(4) } else { 0 };
        let xv = match x_base {
            Some(base) => f32::load4(x, base + kk, valid),
            None => [0.0; 4],
        };
        let wv = if w_row < m {
            W::load4(wa, w_row * k + kk, valid)
        } else {
            [0.0; 4]
        };
        for i in 0..4 {
            xs.store((load_k + i) * STRIDE + load_row, xv[i]);
            ws.store((load_k + i) * STRIDE + load_row, wv[i]);
        }
        if GATED {
            let wv2 = if w_row < m {
                W::load4(wb, w_row * k + kk, valid)
            } else {
                [0.0; 4]
            };
            for (i, v) in wv2.into_iter().enumerate() {
                ws2.store((load_k + i) * STRIDE + load_row, v);
            }
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
            if GATED {
                let b2 = ws2.load4(kt * STRIDE + tx * 4);
                for i in 0..4 {
                    for j in 0..4 {
                        acc2[i][j] = fma(a[i], b2[j], acc2[i][j]);
                    }
                }
            }
        }
        sync_threads();
        k0 += TILE_K;
    }
    (acc, acc2)
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
        let (acc, _) = gemm_tile::<u16, false>(x, w, w, rows, n0, m, k);
        for_each_output(rows, n0, m, |r, n, i, j| {
            let mut v = acc[i][j];
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
        let (acc, _) = gemm_tile::<f32, false>(x, w, w, rows, n0, m, k);
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
        let (g, u) = gemm_tile::<u16, true>(x, w_gate, w_up, rows, n0, m, k);
        for_each_output(rows, n0, m, |r, n, i, j| y.set(r * m + n, silu(g[i][j]) * u[i][j]));
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
        let (g, u) = gemm_tile::<u16, true>(x, wg, wu, rows, n0, m, k);
        for_each_output(rows, n0, m, |r, n, i, j| y.set(r * m + n, silu(g[i][j]) * u[i][j]));
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
        let (acc, _) = gemm_tile::<u16, false>(x, w.offset(e * m * k), w, rows, n0, m, k);
        for_each_output(rows, n0, m, |r, n, i, j| y.set(r * m + n, acc[i][j]));
    }
}
