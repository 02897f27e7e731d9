//! The f32 GEMM on CUDA cores: `y[r, n] = Σ_k x[r, k] · w[n, k]`, f32 activations and weights
//! stored `[out][in]` as in GGUF: the shared-expert gate (qwen2moe), which stays in full
//! precision. Every bf16-weight GEMM runs on tensor cores in `gemm_wgmma`, and so does the MoE
//! router (its f32 weights as three exact bf16 parts: `moe_router`).
//!
//! K is cut into `K_SPLITS` fixed ranges (their bounds depend on `k` alone), each summed by
//! its own block, so even a few rows spread over many blocks (a 512-row GEMM of 64 outputs at
//! k = 2048: 32 blocks of 512 k-steps each); `gemm_f32_sum_splits` then adds the partial sums in split order.
//!
//! Batch invariance: every partial sum is accumulated by one thread, in one register, in
//! ascending k order over its fixed range, and the partials are added in a fixed order.
//! Nothing about that order depends on the number of rows, on which tile a row falls in, or on
//! its neighbours; zero padding past `k` depends on `k` alone. So a row's bits are the same
//! whether it is computed alone, in a batch, or inside any expert group.

use crate::device::math::fma;
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
/// Fixed ranges K is cut into (grid z); partial sums are added in this order.
pub const K_SPLITS: usize = 4;

/// Elements of K per split: ⌈k / K_SPLITS⌉ rounded up to the tile (depends on `k` alone).
pub const fn k_chunk(k: usize) -> usize {
    k.div_ceil(K_SPLITS).div_ceil(TILE_K) * TILE_K
}

/// Floats of one shared tile; two of each (double buffering).
const TILE_FLOATS: usize = TILE_K * STRIDE;
shared_array!(fn gemm_tile_x() -> [f32; 2 * 16 * 68]);
shared_array!(fn gemm_tile_w() -> [f32; 2 * 16 * 68]);

/// `x[idx..idx + 4]`, with elements at and beyond `valid` read as zero.
#[inline(always)]
fn load4(x: In<f32>, idx: usize, valid: usize) -> [f32; 4] {
    if valid >= 4 && idx.is_multiple_of(4) {
        return x.at4(idx);
    }
    core::array::from_fn(|i| if i < valid { x.at(idx + i) } else { 0.0 })
}

/// The rows a block computes: `first..end`.
#[derive(Clone, Copy)]
struct Rows {
    first: usize,
    end: usize,
}

type Acc = [[f32; 4]; 4];

/// One 64 × 64 output tile at feature offset `n0` on CUDA cores, f32 throughout (the f32
/// weights: router and shared-expert gate): this thread's 4 × 4 accumulators.
/// Block: `THREADS` threads.
#[inline(always)]
fn fma_tile(
    x: In<f32>,
    w: In<f32>,
    rows: Rows,
    n0: usize,
    m: usize,
    k: usize,
    ks: (usize, usize),
) -> Acc {
    let (k_begin, k_end) = ks;
    let tid = thread_idx().x as usize;
    let (xs, ws) = (gemm_tile_x(), gemm_tile_w());
    // Loading: thread → (row, 4 consecutive k) of both tiles. Computing: thread → 4 × 4 patch.
    let (load_row, load_k) = (tid / 4, (tid % 4) * 4);
    let (ty, tx) = (tid / 16, tid % 16);
    let r = rows.first + load_row;
    let x_base = if r < rows.end { Some(r * k) } else { None };
    let w_row = n0 + load_row;
    let load = |k0: usize| {
        let kk = k0 + load_k;
        let valid = if kk < k_end { (k_end - kk).min(4) } else { 0 };
        let xv = match x_base {
            Some(base) => load4(x, base + kk, valid),
            None => [0.0; 4],
        };
        let wv = if w_row < m {
            load4(w, w_row * k + kk, valid)
        } else {
            [0.0; 4]
        };
        (xv, wv)
    };
    let stage = |buf: usize, (xv, wv): ([f32; 4], [f32; 4])| {
        for i in 0..4 {
            xs.store(buf * TILE_FLOATS + (load_k + i) * STRIDE + load_row, xv[i]);
            ws.store(buf * TILE_FLOATS + (load_k + i) * STRIDE + load_row, wv[i]);
        }
    };
    let mut acc = [[0.0f32; 4]; 4];
    // Double buffered: the next k-tile's global loads are in flight while this one is
    // multiplied, and one barrier per k-tile separates staging a buffer from reading it (the
    // buffer staged now was last read before the previous barrier).
    stage(0, load(k_begin));
    sync_threads();
    let (mut k0, mut buf) = (k_begin, 0);
    while k0 < k_end {
        let next = k0 + TILE_K;
        let fetched = if next < k_end { Some(load(next)) } else { None };
        let (xt, wt) = (xs.offset(buf * TILE_FLOATS), ws.offset(buf * TILE_FLOATS));
        for kt in 0..TILE_K {
            let a = xt.load4(kt * STRIDE + ty * 4);
            let b = wt.load4(kt * STRIDE + tx * 4);
            for i in 0..4 {
                for j in 0..4 {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
            }
        }
        if let Some(v) = fetched {
            stage(buf ^ 1, v);
        }
        sync_threads();
        (k0, buf) = (next, buf ^ 1);
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

#[inline(always)]
fn dense_rows(n_rows: u32) -> Rows {
    let first = block_idx().y as usize * TILE_M;
    Rows {
        first,
        end: (first + TILE_M).min(n_rows as usize),
    }
}

kernel! {
    /// Partial sums of `y = x · wᵀ` with f32 weights (the shared-expert gate stays f32): `partials[z][r][n]` over K range `z·k_chunk(k)..` (grid z =
    /// `K_SPLITS`; a range past `k` writes zeros).
    pub fn gemm_f32(x: In<f32>, w: In<f32>, partials: Out<f32>, n_rows: u32, m: u32, k: u32) {
        let rows = dense_rows(n_rows);
        let n0 = block_idx().x as usize * TILE_N;
        let (m, k) = (m as usize, k as usize);
        let z = block_idx().z as usize;
        let k_begin = (z * k_chunk(k)).min(k);
        let k_end = (k_begin + k_chunk(k)).min(k);
        let acc = fma_tile(x, w, rows, n0, m, k, (k_begin, k_end));
        let plane = z * n_rows as usize * m;
        for_each_output(rows, n0, m, |r, n, i, j| partials.set(plane + r * m + n, acc[i][j]));
    }
}

kernel! {
    /// `y[i] = ((p₀ + p₁) + p₂) + p₃`: the `K_SPLITS` partial sums of `gemm_f32`, added in split
    /// order. Any 1-D grid covering `n`.
    pub fn gemm_f32_sum_splits(partials: In<f32>, y: Out<f32>, n: u32) {
        let i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        let n = n as usize;
        if i < n {
            let mut acc = partials.at(i);
            for z in 1..K_SPLITS {
                acc += partials.at(z * n + i);
            }
            y.set(i, acc);
        }
    }
}
