//! Causal GQA attention over a bf16 KV cache, in "waves" of queries: `attn_scores` writes
//! scaled scores for a wave into a scratch `[wave][n_head][kv_stride]`, `attn_softmax`
//! normalises each row in place, `attn_pv` weights the values. The host sizes waves so the
//! scratch fits a budget, so prompts far past the context of one launch work.
//!
//! Batch invariance: a query at position `p` reads keys `0..=p` only; its dot products run
//! over head_dim in ascending order; its softmax reduces with a fixed block shape; its output
//! sums keys in ascending order, one accumulator per (query, dim). Nothing depends on which
//! wave or chunk the query is in, or on the other queries of its tile.

use crate::device::float::{bf16_to_f32, f32_to_bf16};
use crate::device::math::{exp, fma, max};
use crate::device::*;

/// Queries per block in `attn_scores` / `attn_pv` (each thread keeps one accumulator each).
pub const QUERY_TILE: usize = 8;
/// Keys per block in `attn_scores` (one per thread).
pub const KEY_TILE: u32 = 128;
/// Threads per row in `attn_softmax` (fixed: part of the reduction order).
pub const SOFTMAX_THREADS: u32 = 256;

shared_array!(fn attn_partials() -> [f32; 32]);
// The query tile of `attn_scores`: QUERY_TILE rows of up to MAX_HEAD_DIM floats.
shared_array!(fn attn_query_tile() -> [f32; 8 * 256]);

/// Largest head_dim the attention kernels take.
pub const MAX_HEAD_DIM: usize = 256;
/// Head dimensions one `attn_pv` thread owns (so one P load feeds this many FMAs).
pub const PV_DIMS: usize = 4;

kernel! {
    /// Appends `n` tokens of K and V (`[n][kv_width]` f32) to the bf16 caches at rows
    /// `start_pos..start_pos + n`. One thread per element; any 1-D grid.
    pub fn kv_append(k: In<f32>, v: In<f32>, k_cache: Out<u16>, v_cache: Out<u16>, start_pos: u32, n: u32, kv_width: u32) {
        let i = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        let w = kv_width as usize;
        if i >= n as usize * w {
            return;
        }
        let dst = start_pos as usize * w + i;
        k_cache.set(dst, f32_to_bf16(k.at(i)));
        v_cache.set(dst, f32_to_bf16(v.at(i)));
    }
}

/// Geometry shared by the three attention kernels.
#[derive(Clone, Copy)]
struct Wave {
    /// Chunk row of the wave's first query, and the wave's length.
    first: usize,
    len: usize,
    /// Cache position of chunk row 0.
    start_pos: usize,
    n_head: usize,
    group: usize,
    head_dim: usize,
    kv_stride: usize,
}

impl Wave {
    #[inline(always)]
    fn new(
        first: u32,
        len: u32,
        start_pos: u32,
        n_head: u32,
        n_kv: u32,
        head_dim: u32,
        kv_stride: u32,
    ) -> Self {
        Wave {
            first: first as usize,
            len: len as usize,
            start_pos: start_pos as usize,
            n_head: n_head as usize,
            group: (n_head / n_kv) as usize,
            head_dim: head_dim as usize,
            kv_stride: kv_stride as usize,
        }
    }
    /// Cache position of the wave's query `qw`: it attends to keys `0..=pos`.
    #[inline(always)]
    fn pos(self, qw: usize) -> usize {
        self.start_pos + self.first + qw
    }
    #[inline(always)]
    fn score_row(self, qw: usize, h: usize) -> usize {
        (qw * self.n_head + h) * self.kv_stride
    }
}

kernel! {
    /// `s[qw, h, j] = scale · q[first + qw, h] · k[j, h / group]` for `j ≤ pos(qw)`.
    /// Grid: (⌈keys/KEY_TILE⌉, n_head, ⌈len/QUERY_TILE⌉); block: KEY_TILE threads.
    pub fn attn_scores(
        q: In<f32>,
        k_cache: In<u16>,
        s: Out<f32>,
        first: u32,
        len: u32,
        start_pos: u32,
        n_head: u32,
        n_kv: u32,
        head_dim: u32,
        kv_stride: u32,
        scale: f32
    ) {
        let wave = Wave::new(first, len, start_pos, n_head, n_kv, head_dim, kv_stride);
        let h = block_idx().y as usize;
        let q0 = block_idx().z as usize * QUERY_TILE;
        let j = (block_idx().x * block_dim().x + thread_idx().x) as usize;
        let last_q = (q0 + QUERY_TILE).min(wave.len) - 1;
        let hd = wave.head_dim;
        // Stage the tile's queries (rows past the wave repeat the last one; never stored).
        let qs = attn_query_tile();
        let mut i = thread_idx().x as usize;
        while i < QUERY_TILE * hd {
            let qw = (q0 + i / hd).min(last_q);
            qs.store(i, q.at(((wave.first + qw) * wave.n_head + h) * hd + i % hd));
            i += block_dim().x as usize;
        }
        sync_threads();
        if j > wave.pos(last_q) {
            return;
        }
        let kv_width = wave.n_head / wave.group * hd;
        // Eight bf16 of the key per 16-byte load.
        let key = k_cache.cast::<u32>().offset((j * kv_width + (h / wave.group) * hd) / 2);
        let mut acc = [0.0f32; QUERY_TILE];
        let mut d = 0;
        while d < hd {
            let packed = key.at4(d / 2);
            let kf: [f32; 8] = core::array::from_fn(|i| bf16_to_f32((packed[i / 2] >> (16 * (i % 2))) as u16));
            for (qi, a) in acc.iter_mut().enumerate() {
                let lo = qs.load4(qi * hd + d);
                let hi = qs.load4(qi * hd + d + 4);
                for i in 0..4 {
                    *a = fma(lo[i], kf[i], *a);
                }
                for i in 0..4 {
                    *a = fma(hi[i], kf[4 + i], *a);
                }
            }
            d += 8;
        }
        for (qi, a) in acc.iter().enumerate() {
            let qw = q0 + qi;
            if qw < wave.len && j <= wave.pos(qw) {
                s.set(wave.score_row(qw, h) + j, *a * scale);
            }
        }
    }
}

kernel! {
    /// Softmax over keys `0..=pos(qw)` of each score row, in place. Grid: (n_head, len);
    /// block: SOFTMAX_THREADS.
    pub fn attn_softmax(s: Out<f32>, first: u32, start_pos: u32, n_head: u32, kv_stride: u32) {
        let (h, qw) = (block_idx().x as usize, block_idx().y as usize);
        let row = (qw * n_head as usize + h) * kv_stride as usize;
        let n = start_pos as usize + first as usize + qw + 1;
        let (t, stride) = (thread_idx().x as usize, block_dim().x as usize);
        let mut m = f32::NEG_INFINITY;
        let mut j = t;
        while j < n {
            m = max(m, s.at(row + j));
            j += stride;
        }
        let m = block_max_f32(m, attn_partials());
        let mut sum = 0.0f32;
        let mut j = t;
        while j < n {
            sum += exp(s.at(row + j) - m);
            j += stride;
        }
        let inv = 1.0 / block_sum_f32(sum, attn_partials());
        let mut j = t;
        while j < n {
            s.set(row + j, exp(s.at(row + j) - m) * inv);
            j += stride;
        }
    }
}

kernel! {
    /// `o[first + qw, h, d] = Σ_{j ≤ pos(qw)} p[qw, h, j] · v[j, h / group, d]`, keys in
    /// ascending order, one accumulator per (query, dim). Grid: (n_head, ⌈len/QUERY_TILE⌉);
    /// block: head_dim / PV_DIMS threads, each owning PV_DIMS consecutive dims.
    pub fn attn_pv(
        p: In<f32>,
        v_cache: In<u16>,
        o: Out<f32>,
        first: u32,
        len: u32,
        start_pos: u32,
        n_head: u32,
        n_kv: u32,
        head_dim: u32,
        kv_stride: u32
    ) {
        let wave = Wave::new(first, len, start_pos, n_head, n_kv, head_dim, kv_stride);
        let h = block_idx().x as usize;
        let q0 = block_idx().y as usize * QUERY_TILE;
        let d0 = thread_idx().x as usize * PV_DIMS;
        let hd = wave.head_dim;
        let kv_width = wave.n_head / wave.group * hd;
        let last_q = (q0 + QUERY_TILE).min(wave.len) - 1;
        // Two bf16 pairs: the thread's four dims of one value row.
        let v_pairs = v_cache.cast::<u32>();
        let v_col = ((h / wave.group) * hd + d0) / 2;
        // Keys each query of the tile reads (0 for rows past the wave), and their score rows.
        let keys: [usize; QUERY_TILE] = core::array::from_fn(|qi| {
            if q0 + qi <= last_q { wave.pos(q0 + qi) + 1 } else { 0 }
        });
        let rows: [usize; QUERY_TILE] =
            core::array::from_fn(|qi| wave.score_row((q0 + qi).min(last_q), h));
        let mut acc = [[0.0f32; PV_DIMS]; QUERY_TILE];
        for j in 0..=wave.pos(last_q) {
            let (a, b) = (v_pairs.at(j * kv_width / 2 + v_col), v_pairs.at(j * kv_width / 2 + v_col + 1));
            let v = [bf16_to_f32(a as u16), bf16_to_f32((a >> 16) as u16), bf16_to_f32(b as u16), bf16_to_f32((b >> 16) as u16)];
            #[allow(clippy::needless_range_loop)] // constant indices keep `acc` in registers
            for qi in 0..QUERY_TILE {
                if j < keys[qi] {
                    let pj = p.at(rows[qi] + j);
                    for i in 0..PV_DIMS {
                        acc[qi][i] = fma(pj, v[i], acc[qi][i]);
                    }
                }
            }
        }
        for (qi, row) in acc.iter().enumerate() {
            let qw = q0 + qi;
            if qw <= last_q {
                let base = ((wave.first + qw) * wave.n_head + h) * hd + d0;
                for (i, a) in row.iter().enumerate() {
                    o.set(base + i, *a);
                }
            }
        }
    }
}
