//! Flash attention for prefill on Hopper tensor cores: causal, GQA, head_dim 128 or 64, queries
//! of a chunk at absolute positions `start_pos..start_pos + n` over keys `0..start_pos + n` of a
//! bf16 KV cache; output bf16 (it feeds the output projection's TMA loads).
//!
//! Two entries, `flash_attention_hd128` and `flash_attention_hd64`, share one generic body
//! ([`attend`]) over the O accumulator type ([`HeadDim`]): `[f32; 64]` (head_dim 128, two
//! 64-wide head-dim chunks, `O += P·V` as m64n128k16) or `[f32; 32]` (head_dim 64, one chunk,
//! m64n64k16). Everything else is the same code: `S = Q·Kᵀ` is m64n128k16 over 4·chunks
//! k-steps, P·V 8 k-steps of 16 keys, the same softmax, ring and pipeline. Shared memory
//! scales with the chunk count (Q tile, K and V slots of `chunks · 16 KB` each).
//!
//! Block: 384 threads, three warpgroups. Warpgroups 0 and 1 are the consumers, 64 query rows
//! each (a 128-row tile of one query head); warpgroup 2 is the producer: its first thread
//! issues the TMA loads (the Q tile, then K and V blocks of `BLOCK_KV` keys through a
//! three-slot ring, 128B swizzle, full/empty mbarriers), refilling a slot as soon as both
//! consumers have released it. Per key block a consumer computes `S = Q·Kᵀ` (`wgmma`
//! m64n128k16 from shared memory), scales it (and masks it, in blocks on the diagonal), updates
//! the online softmax in registers, and accumulates `O += P·V` with P taken from the S
//! registers as the A operand (`wgmma` register-A form). The loop is software-pipelined: the
//! softmax of block j runs on the CUDA cores while the tensor cores do block j−1's P·V.
//!
//! Registers: 384 threads get at most 168 each at launch, and a consumer needs ~200 (two
//! 64-value accumulators and P). So the producer warpgroup gives its registers back
//! (`lower_registers::<24>`) and the consumers take them (`raise_registers::<240>`; the split
//! must fit the block's launch pool, `registers_fit`, checked at compile time), which
//! ptxas honours because the entry is declared for exactly `THREADS` threads (`.maxntid`).
//! Before that, thread 0 of a consumer issued the loads between its own products, and its
//! warp stalled at every refill.
//!
//! Cache layouts: K is `[position][n_kv · head_dim]` (row-major, so a key block is K-major for
//! `S = Q·Kᵀ`); V is stored transposed, `[n_kv · head_dim][capacity]`, so a value block is
//! K-major (keys contiguous) for `O += P·V` as well: both products use the one descriptor form
//! the GEMM uses. Cache entries past the written positions must be finite (the host zeroes the
//! cache once): masked keys get probability 0, and 0 · V must stay 0.
//!
//! Batch invariance (both head dims): key blocks are `BLOCK_KV` wide, aligned to absolute position 0, and always
//! visited in ascending order from block 0. A query's state after a block depends only on its
//! row of Q, the block's keys and its own absolute position (the causal mask); a block that is
//! entirely in a query's future leaves its state bit-identical (row max unchanged, rescale
//! factor exp2(0) = 1, probabilities exactly 0, `+ 0` on O and on the row sum). So the result
//! does not depend on N, on the chunking, or on which tile or tile row a query lands in. The
//! row sums reduce in a fixed order: per block, a thread's own 32 values in four interleaved
//! partial sums added pairwise, into its running sum; the four lanes of a row (xor 1, then
//! xor 2) only at the end. The head_dim-64 variant changes only how many head dims a product spans, not the key blocks,
//! their order or the update sequence, so the same argument holds for it unchanged.

// `seq!` unrolls loops by substituting each literal index into arithmetic written for all of
// them (`8 * R`, `4 * J + 0`, `KK / 4` with KK = 0, …); the lints below would flag the cases
// that happen to be identities.
#![allow(clippy::identity_op, clippy::erasing_op, clippy::eq_op)]

use crate::device::async_copy::{
    Mbarrier, TensorMap, acquire_tensor_map, fence_mbarrier_init, prefetch_tensor_map, tma_load_2d,
};
use crate::device::float::pack_bf16x2;
use crate::device::math::{exp2, fma, max};
use crate::device::staging::{WARP_STAGE_BYTES, WarpStage};
use crate::device::tensor_core::{
    Accumulators, WgmmaDesc, swizzle_aligned_shared_base, wgmma_commit, wgmma_fence,
    wgmma_m64n64k16_rs, wgmma_m64n128k16_rs, wgmma_m64n128k16_ss, wgmma_wait,
};
use crate::device::*;
use seq_macro::seq;

/// Head dimension of the `flash_attention_hd128` entry.
pub const HEAD_DIM: usize = 128;
/// Head dimensions with an entry (`flash_attention_hd64`, `flash_attention_hd128`).
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// Query rows per block (two consumer warpgroups of 64).
pub const BLOCK_Q: usize = 128;
/// Keys per block; blocks start at multiples of this absolute position.
pub const BLOCK_KV: usize = 128;
/// Threads per block: two consumer warpgroups and the producer.
pub const THREADS: u32 = 384;
/// The first thread of the producer warpgroup.
const PRODUCER: u32 = 256;
/// Registers per thread of the producer and of each consumer warpgroup (module doc).
const PRODUCER_REGISTERS: u32 = 24;
const CONSUMER_REGISTERS: u32 = 240;
const _: () = assert!(registers_fit(
    THREADS,
    &[CONSUMER_REGISTERS, CONSUMER_REGISTERS, PRODUCER_REGISTERS]
));
/// A swizzled chunk: 128 rows of 64 bf16 (128 bytes).
const CHUNK_BYTES: u32 = 128 * 128;
const KV_STAGES: usize = 3;
/// Dynamic shared memory a launch of the head_dim-`head_dim` entry must provide: the Q tile
/// and `KV_STAGES` K and V slots of `head_dim / 64` chunks each, the mbarriers, alignment slack.
pub const fn shared_bytes(head_dim: usize) -> u32 {
    (1 + 2 * KV_STAGES as u32) * (head_dim as u32 / 64) * CHUNK_BYTES + 64 + 1024
}
/// Dynamic shared memory of the head_dim-128 entry.
pub const SHARED_BYTES: u32 = shared_bytes(HEAD_DIM);
/// Q and K maps have a box of 64 × 128 elements; the transposed V cache a box of 64 keys ×
/// `head_dim` rows.
pub const BOX_INNER: u32 = 64;
pub const BOX_OUTER: u32 = 128;

/// The shared-memory layout for `chunks` 64-wide head-dim chunks: the Q tile, the K slots, the
/// V slots (`chunks · CHUNK_BYTES` each, "a stage"), then the mbarriers.
#[derive(Clone, Copy)]
struct Smem {
    base: u32,
    chunks: u32,
}

impl Smem {
    #[inline(always)]
    fn new(chunks: u32) -> Self {
        Smem {
            base: swizzle_aligned_shared_base(),
            chunks,
        }
    }
    /// Bytes of the Q tile, and of one K or one V slot.
    #[inline(always)]
    fn stage_bytes(self) -> u32 {
        self.chunks * CHUNK_BYTES
    }
    /// Chunk `c` of the Q tile (head dims `64c..64c + 64` of 128 rows).
    #[inline(always)]
    fn q(self, c: u32) -> u32 {
        self.base + c * CHUNK_BYTES
    }
    /// Chunk `c` of K slot `s`: head dims `64c..` of 128 keys.
    #[inline(always)]
    fn k(self, s: usize, c: u32) -> u32 {
        self.base + self.stage_bytes() * (1 + s as u32) + c * CHUNK_BYTES
    }
    /// Chunk `c` of V slot `s`: keys `64c..` of all head dims (V transposed; `64 · chunks`
    /// rows of 128 bytes).
    #[inline(always)]
    fn v(self, s: usize, c: u32) -> u32 {
        let stage = self.stage_bytes();
        self.base + stage * (1 + KV_STAGES as u32 + s as u32) + c * (stage / 2)
    }
    #[inline(always)]
    fn barrier(self, i: u32) -> Mbarrier {
        Mbarrier(self.base + self.stage_bytes() * (1 + 2 * KV_STAGES as u32) + 8 * i)
    }
    #[inline(always)]
    fn q_full(self) -> Mbarrier {
        self.barrier(0)
    }
    #[inline(always)]
    fn full(self, s: usize) -> Mbarrier {
        self.barrier(1 + s as u32)
    }
    #[inline(always)]
    fn empty(self, s: usize) -> Mbarrier {
        self.barrier(1 + KV_STAGES as u32 + s as u32)
    }
}

/// Max over the four lanes that share a fragment row (lanes `4g..4g + 4`).
#[inline(always)]
fn quad_max(v: f32) -> f32 {
    let v = max(v, shfl_xor_f32(v, 1));
    max(v, shfl_xor_f32(v, 2))
}

/// Sum over the four lanes that share a fragment row, in a fixed order.
#[inline(always)]
fn quad_sum(v: f32) -> f32 {
    let v = v + shfl_xor_f32(v, 1);
    v + shfl_xor_f32(v, 2)
}

/// The online-softmax state of this thread's two rows (in the exp2 domain): the row maxima,
/// and the sums over this thread's columns of each row.
#[derive(Clone, Copy)]
struct RowState {
    max: [f32; 2],
    sum: [f32; 2],
}

/// The O accumulator of one head dim, and what differs between the head dims: `[f32; 64]`
/// for head_dim 128 (O += P·V as m64n128k16), `[f32; 32]` for head_dim 64 (m64n64k16). Per
/// thread, value `4j + e` is row `r + 8·(e / 2)`, head dim `8j + 2·(lane % 4) + e % 2`.
pub trait HeadDim: Accumulators + Copy {
    /// 64-wide head-dim chunks (head_dim / 64).
    const CHUNKS: usize;
    const ZERO: Self;
    /// One k-step of `O += P·V`: 16 keys of P (register A) times the V tile at `b`.
    fn pv(&mut self, a: [u32; 4], b: WgmmaDesc);
    /// Multiplies this thread's row `R` values by `alpha[R]`.
    fn rescale(&mut self, alpha: [f32; 2]);
    /// Stores the values of row `e0 / 2` (`e0` 0 or 2), times `inv`, as bf16 pairs from
    /// `o[2·at]` on (head dims `8j + e`, `2·at` the thread's first column).
    fn store_row(&self, o: Out<u32>, at: usize, e0: usize, inv: f32);
    /// As `store_row`, into row `row` of a warp's staging area; `at`: (`e0`, the thread's first
    /// column `col`, written at byte `2·col`).
    fn stage_row(&self, stage: WarpStage, row: u32, at: (usize, u32), inv: f32);
}

macro_rules! head_dim_acc {
    ($len:literal, $pv:ident) => {
        impl HeadDim for [f32; $len] {
            const CHUNKS: usize = $len / 32;
            const ZERO: Self = [0.0; $len];
            #[inline(always)]
            fn pv(&mut self, a: [u32; 4], b: WgmmaDesc) {
                $pv(self, a, b);
            }
            #[inline(always)]
            fn rescale(&mut self, alpha: [f32; 2]) {
                // A slice, so the indices past `$len` in the (compile-time dead) branches
                // are no error.
                let v: &mut [f32] = self;
                seq!(I in 0..64 {
                    if I < $len {
                        v[I] *= alpha[I % 4 / 2];
                    }
                });
            }
            #[inline(always)]
            fn stage_row(&self, stage: WarpStage, row: u32, (e0, col): (usize, u32), inv: f32) {
                let v: &[f32] = self;
                seq!(J in 0..16 {
                    if J < $len / 4 {
                        let w = pack_bf16x2(v[4 * J + e0] * inv, v[4 * J + e0 + 1] * inv);
                        stage.put(row, 2 * (col + 8 * J as u32), w);
                    }
                });
            }
            #[inline(always)]
            fn store_row(&self, o: Out<u32>, at: usize, e0: usize, inv: f32) {
                let v: &[f32] = self;
                seq!(J in 0..16 {
                    if J < $len / 4 {
                        o.set(at + 4 * J, pack_bf16x2(v[4 * J + e0] * inv, v[4 * J + e0 + 1] * inv));
                    }
                });
            }
        }
    };
}

head_dim_acc!(64, wgmma_m64n128k16_rs);
head_dim_acc!(32, wgmma_m64n64k16_rs);

/// Issues `S = Q·Kᵀ` over the key block in slot `slot` (no commit): `4 · A::CHUNKS` k-steps.
#[inline(always)]
fn scores<A: HeadDim>(acc_s: &mut [f32; 64], qa: [WgmmaDesc; 2], sm: Smem, slot: usize) {
    let kd = [
        WgmmaDesc::k_major_swizzle_128b(sm.k(slot, 0)),
        WgmmaDesc::k_major_swizzle_128b(sm.k(slot, 1)),
    ];
    seq!(KK in 0..8 {
        if KK < 4 * A::CHUNKS {
            wgmma_m64n128k16_ss(
                acc_s,
                qa[KK / 4].advance(32 * (KK % 4)),
                kd[KK / 4].advance(32 * (KK % 4)),
            );
        }
    });
}

/// Issues `O += P·V` over the value block in slot `slot` (no commit); P as the A operand,
/// k-step KK = keys 16·KK.. (its fragment registers `4·KK..4·KK + 4`).
#[inline(always)]
fn accumulate_pv<A: HeadDim>(acc_o: &mut A, pa: &[u32; 32], sm: Smem, slot: usize) {
    let vd = [
        WgmmaDesc::k_major_swizzle_128b(sm.v(slot, 0)),
        WgmmaDesc::k_major_swizzle_128b(sm.v(slot, 1)),
    ];
    seq!(KK in 0..8 {
        let a = [pa[4 * KK], pa[4 * KK + 1], pa[4 * KK + 2], pa[4 * KK + 3]];
        acc_o.pv(a, vd[KK / 4].advance(32 * (KK % 4)));
    });
}

/// One key block of the online softmax. Keys after a row's absolute position are masked (only
/// in blocks that reach past the warpgroup's first query: elsewhere every key is visible and
/// the mask would change nothing), the row state advances in the exp2 domain, and S becomes P
/// (f32). Returns the factor that rescales O to the new row maxima.
///
/// The maxima are taken over the raw scores and scaled once: scaling by a positive factor is
/// monotonic, rounding too, so `max(s)·scale` is exactly the maximum of the scaled scores; each
/// probability is then one `fma` and one `ex2`. Maxima are exact in any order; the row sum
/// adds in a fixed order (four interleaved partial sums, then lanes), the same for every N.
#[inline(always)]
fn softmax_step(
    acc_s: &mut [f32; 64],
    rows: &mut RowState,
    key0: u32,
    q_pos: [u32; 2],
    masked: bool,
    scale_log2: f32,
) -> [f32; 2] {
    // Partial maxima per row: (row R, group I/4 % 4), so the chains are short.
    let mut part_max = [[f32::NEG_INFINITY; 4]; 2];
    if masked {
        seq!(I in 0..64 {
            let key = key0 + 8 * (I / 4) + I % 2;
            if key > q_pos[I % 4 / 2] {
                acc_s[I] = f32::NEG_INFINITY;
            }
            part_max[I % 4 / 2][I / 4 % 4] = max(part_max[I % 4 / 2][I / 4 % 4], acc_s[I]);
        });
    } else {
        seq!(I in 0..64 {
            part_max[I % 4 / 2][I / 4 % 4] = max(part_max[I % 4 / 2][I / 4 % 4], acc_s[I]);
        });
    }
    let mut alpha = [0.0f32; 2];
    let mut neg_max = [0.0f32; 2];
    seq!(R in 0..2 {
        let m = max(max(part_max[R][0], part_max[R][1]), max(part_max[R][2], part_max[R][3]));
        let new_max = max(rows.max[R], quad_max(m) * scale_log2);
        alpha[R] = exp2(rows.max[R] - new_max);
        rows.max[R] = new_max;
        neg_max[R] = -new_max;
    });
    let mut part_sum = [[0.0f32; 4]; 2];
    seq!(I in 0..64 {
        let p = exp2(fma(acc_s[I], scale_log2, neg_max[I % 4 / 2]));
        acc_s[I] = p;
        part_sum[I % 4 / 2][I / 4 % 4] += p;
    });
    seq!(R in 0..2 {
        let block_sum = (part_sum[R][0] + part_sum[R][1]) + (part_sum[R][2] + part_sum[R][3]);
        rows.sum[R] = rows.sum[R] * alpha[R] + block_sum;
    });
    alpha
}

/// P packed as bf16 pairs, the register-A fragments of `accumulate_pv`.
#[inline(always)]
fn pack_p(acc_s: &[f32; 64]) -> [u32; 32] {
    let mut pa = [0u32; 32];
    seq!(KK in 0..8 {
        pa[4 * KK] = pack_bf16x2(acc_s[8 * KK], acc_s[8 * KK + 1]);
        pa[4 * KK + 1] = pack_bf16x2(acc_s[8 * KK + 2], acc_s[8 * KK + 3]);
        pa[4 * KK + 2] = pack_bf16x2(acc_s[8 * KK + 4], acc_s[8 * KK + 5]);
        pa[4 * KK + 3] = pack_bf16x2(acc_s[8 * KK + 6], acc_s[8 * KK + 7]);
    });
    pa
}

/// The kernel body of both entries, for the O accumulator `A` (the head dim, see [`HeadDim`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend<A: HeadDim>(
    map_q: In<TensorMap>,
    map_k: In<TensorMap>,
    map_v: In<TensorMap>,
    o: Out<u16>,
    n: u32,
    start_pos: u32,
    n_head: u32,
    n_kv: u32,
    scale_log2: f32,
) {
    let tid = thread_idx().x;
    // Heads vary fastest and query tiles run last to first: the longest (causal) tiles
    // start first, so the last wave is made of short ones.
    let head = block_idx().x;
    let kv_head = head / (n_head / n_kv);
    let row0 = (grid_dim().y - 1 - block_idx().y) * BLOCK_Q as u32;
    let last_pos = start_pos + (row0 + BLOCK_Q as u32).min(n) - 1;
    let n_blocks = (last_pos / BLOCK_KV as u32 + 1) as usize;
    let sm = Smem::new(A::CHUNKS as u32);
    if tid == 0 {
        sm.q_full().init(1);
        for s in 0..KV_STAGES {
            sm.full(s).init(1);
            sm.empty(s).init(2);
        }
        fence_mbarrier_init();
    }
    sync_threads();
    let loads = Loads {
        map_q,
        map_k,
        map_v,
        sm,
        head,
        kv_head,
    };
    if tid >= PRODUCER {
        lower_registers::<PRODUCER_REGISTERS>();
        if tid == PRODUCER {
            loads.start(row0, n_blocks);
            let mut issued = KV_STAGES.min(n_blocks);
            loads.top_up(&mut issued, n_blocks);
        }
        return;
    }
    raise_registers::<CONSUMER_REGISTERS>();
    // Consumer: warpgroup `wg` owns tile rows 64·wg..; this thread rows `r` and `r + 8`.
    let wg = tid / 128;
    let (warp, lane) = (tid % 128 / 32, tid % 32);
    let r = wg * 64 + warp * 16 + lane / 4;
    let q_pos = [start_pos + row0 + r, start_pos + row0 + r + 8];
    // Key blocks reaching past the warpgroup's first query need the causal mask.
    let first_masked = ((start_pos + row0 + wg * 64) / BLOCK_KV as u32) as usize;
    let col = 2 * (lane % 4);
    sm.q_full().wait(0);
    let qa = [
        WgmmaDesc::k_major_swizzle_128b(sm.q(0) + wg * 8192),
        WgmmaDesc::k_major_swizzle_128b(sm.q(1) + wg * 8192),
    ];
    let mut acc_o = A::ZERO;
    let mut rows = RowState {
        max: [f32::NEG_INFINITY; 2],
        sum: [0.0; 2],
    };
    let step = |acc_s: &mut [f32; 64], rows: &mut RowState, kb: usize| {
        let key0 = (kb * BLOCK_KV) as u32 + col;
        softmax_step(acc_s, rows, key0, q_pos, kb >= first_masked, scale_log2)
    };
    // Software pipeline: while the tensor cores run O += P_{j-1}·V_{j-1}, the warpgroup
    // does the softmax of S_j (issued just before it). The operations on O stay in the
    // order of the unpipelined loop (… + P_{j-1}V_{j-1}, × alpha_j, + P_j V_j …), so the
    // bits do too. Block 0 has no predecessor: its S and softmax run alone.
    sm.full(0).wait(0);
    let mut acc_s = [0.0f32; 64];
    acc_s.keep_in_registers();
    wgmma_fence();
    scores::<A>(&mut acc_s, qa, sm, 0);
    wgmma_commit();
    wgmma_wait::<0>();
    acc_s.keep_in_registers();
    // O is zero: its rescale by alpha_0 (= 0) is a no-op.
    step(&mut acc_s, &mut rows, 0);
    let mut pa = pack_p(&acc_s);
    for kb in 1..n_blocks {
        let (slot, prev) = (kb % KV_STAGES, (kb - 1) % KV_STAGES);
        sm.full(slot).wait((kb / KV_STAGES) as u32 & 1);
        let mut acc_s = [0.0f32; 64];
        acc_s.keep_in_registers();
        pa.keep_in_registers();
        acc_o.keep_in_registers();
        wgmma_fence();
        scores::<A>(&mut acc_s, qa, sm, slot);
        wgmma_commit();
        accumulate_pv(&mut acc_o, &pa, sm, prev);
        wgmma_commit();
        // S_j is the older group: done once at most one group is pending.
        wgmma_wait::<1>();
        acc_s.keep_in_registers();
        let alpha = step(&mut acc_s, &mut rows, kb);
        wgmma_wait::<0>();
        acc_o.keep_in_registers();
        sm.empty(prev).arrive_if(tid.is_multiple_of(128));
        // Once the row maxima settle, most blocks leave every factor at exactly 1: skip the
        // multiplies then (x · 1 = x, so the bits are the same either way).
        if !vote_all(alpha[0] == 1.0 && alpha[1] == 1.0) {
            acc_o.rescale(alpha);
        }
        pa = pack_p(&acc_s);
    }
    pa.keep_in_registers();
    acc_o.keep_in_registers();
    wgmma_fence();
    accumulate_pv(&mut acc_o, &pa, sm, (n_blocks - 1) % KV_STAGES);
    wgmma_commit();
    wgmma_wait::<0>();
    acc_o.keep_in_registers();
    // Each thread summed its own columns of the row; the four lanes of a row add theirs last.
    let inv = [1.0 / quad_sum(rows.sum[0]), 1.0 / quad_sum(rows.sum[1])];
    let hd = 64 * A::CHUNKS as u32;
    let width = (n_head * hd) as usize;
    let base_col = (head * hd + col) as usize;
    let o2 = o.cast::<u32>();
    if A::CHUNKS == 2 {
        // head_dim 128: through a staging area in this warp's own rows of the Q tile, free
        // now (its last reader, S of the last block, completed before the last P·V), so a
        // warp instruction stores two whole 256-byte rows of O.
        let q_rows = sm.q(warp / 2) + wg * 8192 + warp % 2 * WARP_STAGE_BYTES;
        let stage = WarpStage::at(q_rows, shared_bytes(HEAD_DIM), 0);
        seq!(R in 0..2 {
            acc_o.stage_row(stage, lane / 4 + 8 * R, (2 * R, col), inv[R]);
        });
        stage.drain(2 * hd, |s, k, w| {
            let row = row0 + wg * 64 + warp * 16 + s;
            if row < n {
                o2.set4((row as usize * width + (head * hd + 8 * k) as usize) / 2, w);
            }
        });
        return;
    }
    // Pairs of bf16 as one 4-byte store (`col` and `width` are even).
    seq!(R in 0..2 {
        let row = row0 + r + 8 * R;
        if row < n {
            acc_o.store_row(o2, (row as usize * width + base_col) / 2, 2 * R, inv[R]);
        }
    });
}

kernel! {
    threads = THREADS;
    /// Causal GQA attention of `n` queries at positions `start_pos..` over the cache, head_dim
    /// 128. `map_q`: bf16 `[rows ≥ n][n_head · 128]`; `map_k`: bf16 K cache
    /// `[capacity][n_kv · 128]`; `map_v`: bf16 V cache transposed, `[n_kv · 128][capacity]`;
    /// Q and K maps have box `BOX_INNER × BOX_OUTER`, V box `BOX_INNER × 128`, all 128B
    /// swizzle. `o`: bf16 `[n][n_head · 128]`. `scale_log2` = softmax scale · log2(e).
    /// Grid: (n_head, ⌈n / BLOCK_Q⌉); `THREADS` threads; `shared_bytes(128)` of dynamic
    /// shared memory.
    pub fn flash_attention_hd128(map_q: In<TensorMap>, map_k: In<TensorMap>, map_v: In<TensorMap>, o: Out<u16>, n: u32, start_pos: u32, n_head: u32, n_kv: u32, scale_log2: f32) {
        attend::<[f32; 64]>(map_q, map_k, map_v, o, n, start_pos, n_head, n_kv, scale_log2);
    }
}

kernel! {
    threads = THREADS;
    /// As `flash_attention_hd128` for head_dim 64: rows of `n_head · 64` / `n_kv · 64`, the V
    /// map's box `BOX_INNER × 64`; `shared_bytes(64)` of dynamic shared memory.
    pub fn flash_attention_hd64(map_q: In<TensorMap>, map_k: In<TensorMap>, map_v: In<TensorMap>, o: Out<u16>, n: u32, start_pos: u32, n_head: u32, n_kv: u32, scale_log2: f32) {
        attend::<[f32; 32]>(map_q, map_k, map_v, o, n, start_pos, n_head, n_kv, scale_log2);
    }
}

/// The TMA loads of one block, all issued by the producer's first thread.
#[derive(Clone, Copy)]
struct Loads {
    map_q: In<TensorMap>,
    map_k: In<TensorMap>,
    map_v: In<TensorMap>,
    sm: Smem,
    head: u32,
    kv_head: u32,
}

impl Loads {
    /// The Q tile, and the first key blocks into every ring slot.
    #[inline(always)]
    fn start(self, row0: u32, n_blocks: usize) {
        for map in [self.map_q, self.map_k, self.map_v] {
            acquire_tensor_map(map);
            prefetch_tensor_map(map);
        }
        let sm = self.sm;
        let hd = 64 * sm.chunks;
        let q_full = sm.q_full();
        q_full.arrive_expect_tx(sm.stage_bytes());
        for c in 0..sm.chunks {
            tma_load_2d(sm.q(c), self.map_q, self.head * hd + 64 * c, row0, q_full);
        }
        for kb in 0..KV_STAGES.min(n_blocks) {
            self.load_block(kb);
        }
    }

    /// Issues the key blocks after `issued`, each as soon as both consumers have released its
    /// slot.
    #[inline(always)]
    fn top_up(self, issued: &mut usize, n_blocks: usize) {
        while *issued < n_blocks {
            let kb = *issued;
            let parity = ((kb / KV_STAGES) as u32 + 1) & 1;
            self.sm.empty(kb % KV_STAGES).wait(parity);
            self.load_block(kb);
            *issued += 1;
        }
    }

    #[inline(always)]
    fn load_block(self, kb: usize) {
        let sm = self.sm;
        let hd = 64 * sm.chunks;
        let s = kb % KV_STAGES;
        let full = sm.full(s);
        full.arrive_expect_tx(2 * sm.stage_bytes());
        let key0 = (kb * BLOCK_KV) as u32;
        let col = self.kv_head * hd;
        for c in 0..sm.chunks {
            tma_load_2d(sm.k(s, c), self.map_k, col + 64 * c, key0, full);
        }
        // V boxes are 64 keys × all `hd` rows of this KV head.
        tma_load_2d(sm.v(s, 0), self.map_v, key0, col, full);
        tma_load_2d(sm.v(s, 1), self.map_v, key0 + 64, col, full);
    }
}
