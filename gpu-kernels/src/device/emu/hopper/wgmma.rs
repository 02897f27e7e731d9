//! `wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16` (PTX ISA, "Asynchronous warpgroup
//! level matrix multiply-accumulate"), with `wgmma.fence`, `commit_group` and `wait_group`.
//!
//! **Product.** A collective over the warpgroup (the 128 threads of 4 consecutive warps, the
//! first warp index divisible by 4): each thread publishes its descriptors (and, in the
//! register-A form, its four A registers); the first to continue computes the 64 × N tile
//! `A·B` once for all (`Exchange::once`), each product of two bf16 exact in f64 and the 16 of a
//! dot product summed in f64 in k order; each thread then adds its own accumulators in f64 and
//! rounds once to f32, as the emulator's `mma.sync` does. The hardware sums in its own order
//! and precision: tests compare with a tolerance, never emulator bits with GPU bits.
//!
//! **Operands in shared memory** (PTX ISA, "Shared memory matrix layout", K-major with the
//! 128-byte swizzle, the only form `WgmmaDesc::k_major_swizzle_128b` builds; any other swizzle
//! mode is refused). Descriptor: start address bits 0–13 (`>> 4`), leading-dimension offset
//! bits 16–29 (unused by swizzled K-major layouts), stride-dimension offset (SBO) bits 32–45
//! (`>> 4`), base offset bits 49–51 (must be 0), swizzle mode bits 62–63 (1 = 128B). Element
//! (row `i`, k) of the A tile (64 rows) or of B (N rows: B is N × 16 stored K-major, like
//! `w[n][k]`) is at `start + (i / 8)·SBO + (i % 8)·128 + 2k`, and then the swizzle XORs address
//! bits 4–6 with bits 7–9 of that absolute shared address: so advancing the start by 32 bytes
//! moves to the next 16 k of the same 128-byte row.
//!
//! **Races.** The rows each `wgmma` reads are checked against the copies that wrote them, and
//! recorded until each thread's `wait_group` retires them (`race.rs`).
//!
//! **Registers.** Thread `t` (warp `w = t / 32`, lane `l`) holds `d[4j + e]` = D(row `16w + l/4
//! + 8·(e/2)`, column `8j + 2·(l%4) + e%2`); in the register-A form its `a[0..4]` hold A at
//! (row `16w + l/4`, k `2q, 2q+1`), (row + 8, same k), (row, k + 8), (row + 8, k + 8), `q = l % 4`,
//! lower k in bits 0–15: the `mma.sync` m16n8k16 A fragment of the warp's 16 rows.
//!
//! **Fence, commit, wait.** The product is computed at issue, so nothing waits; but each
//! thread's batches are tracked to catch what would be undefined on the GPU: a `wgmma` with no
//! `wgmma.fence` since the thread's start or its last `wait_group` (the accumulators were
//! just read or written by ordinary code), a `wait_group` while `wgmma`s are not committed (the
//! wait does not cover them), and a thread that exits with batches not waited for.

use super::with_hopper;
use crate::device::emu::block::ctx;
use crate::device::emu::collective::{Exchange, Group, collective};
use crate::device::emu::shared::SharedWindow;
use crate::device::tensor_core::WgmmaDesc;
use crate::device::types::Dim3;
use std::collections::VecDeque;

/// Rows of A and of D.
const M: usize = 64;
/// The k of one instruction.
const K: usize = 16;

/// The collective's name per shape and A source (the mismatch check compares them).
fn name(n: usize, a_in_registers: bool) -> &'static str {
    match (n, a_in_registers) {
        (64, false) => "wgmma.mma_async.m64n64k16 (A, B in shared memory)",
        (128, false) => "wgmma.mma_async.m64n128k16 (A, B in shared memory)",
        (256, false) => "wgmma.mma_async.m64n256k16 (A, B in shared memory)",
        (64, true) => "wgmma.mma_async.m64n64k16 (A in registers)",
        (128, true) => "wgmma.mma_async.m64n128k16 (A in registers)",
        (256, true) => "wgmma.mma_async.m64n256k16 (A in registers)",
        _ => panic!("wgmma m64n{n}k16 is not a shape kiln emulates (N = 64, 128 or 256)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Per-thread batches: fence, commit, wait
// ---------------------------------------------------------------------------------------------

/// One thread's `wgmma` state.
struct Thread {
    idx: Dim3,
    /// A `wgmma.fence` since the thread started or last waited.
    fenced: bool,
    /// The shared-memory reads (see `race.rs`) of the `wgmma`s issued since the last commit,
    /// and of each committed group not yet waited for, oldest first.
    open: Vec<u32>,
    groups: VecDeque<Vec<u32>>,
}

/// Every thread's `wgmma` batches, by rank.
#[derive(Default)]
pub(super) struct Batches {
    threads: Vec<Thread>,
}

impl Batches {
    fn of(&mut self, rank: u32) -> &mut Thread {
        if self.threads.is_empty() {
            let d = ctx().block_dim;
            self.threads = (0..d.count() as u32)
                .map(|r| Thread {
                    idx: Dim3::new(r % d.x, (r / d.x) % d.y, r / (d.x * d.y)),
                    fenced: false,
                    open: Vec::new(),
                    groups: VecDeque::new(),
                })
                .collect();
        }
        &mut self.threads[rank as usize]
    }

    /// At block exit: a thread that left `wgmma`s unretired.
    pub(super) fn on_block_exit(&self) -> Result<(), String> {
        for t in &self.threads {
            if !t.open.is_empty() || !t.groups.is_empty() {
                return Err(format!(
                    "thread ({}, {}, {}) exited with wgmma work not waited for ({} wgmma not \
                     committed, {} committed groups not waited for): end with wgmma.commit_group \
                     and wgmma.wait_group 0",
                    t.idx.x,
                    t.idx.y,
                    t.idx.z,
                    t.open.len(),
                    t.groups.len()
                ));
            }
        }
        Ok(())
    }
}

/// `wgmma.fence.sync.aligned`.
pub fn wgmma_fence() {
    let rank = ctx().rank;
    with_hopper(|h| h.wgmma.of(rank).fenced = true)
}

/// `wgmma.commit_group.sync.aligned` (an empty group if nothing was issued, as in PTX).
pub fn wgmma_commit() {
    let rank = ctx().rank;
    with_hopper(|h| {
        let t = h.wgmma.of(rank);
        let group = std::mem::take(&mut t.open);
        t.groups.push_back(group);
    })
}

/// `wgmma.wait_group.sync.aligned n`: at most `n` groups stay in flight; the others' reads
/// of shared memory are over.
pub fn wgmma_wait(n: u32) {
    let rank = ctx().rank;
    with_hopper(|h| {
        let t = h.wgmma.of(rank);
        if !t.open.is_empty() {
            panic!(
                "wgmma.wait_group {n} with {} wgmma not committed: wait_group covers committed \
                 groups only (wgmma.commit_group first)",
                t.open.len()
            );
        }
        t.fenced = false;
        while t.groups.len() > n as usize {
            let ids = t.groups.pop_front().expect("more groups than n");
            h.races.retire(rank as usize, &ids);
        }
    })
}

fn note_issue(what: &str) {
    let rank = ctx().rank;
    with_hopper(|h| {
        if !h.wgmma.of(rank).fenced {
            panic!(
                "{what} without a wgmma.fence before it: the first wgmma of a thread, and the \
                 first after a wgmma.wait_group, must follow a wgmma.fence"
            );
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Operands
// ---------------------------------------------------------------------------------------------

/// A decoded shared-memory operand descriptor.
#[derive(Clone, Copy)]
struct Operand {
    desc: u64,
    start: u32,
    sbo: u32,
}

fn decode(what: &str, which: &str, desc: u64) -> Operand {
    let mode = desc >> 62;
    if mode != 1 {
        let mode_name = ["no swizzle", "128-byte", "64-byte", "32-byte"][mode as usize];
        panic!(
            "{what}: descriptor {which} {desc:#018x} has swizzle mode {mode} ({mode_name}); the \
             emulator models only the K-major 128-byte swizzle (mode 1, what \
             WgmmaDesc::k_major_swizzle_128b builds)"
        );
    }
    let base_offset = (desc >> 49) & 7;
    if base_offset != 0 {
        panic!(
            "{what}: descriptor {which} {desc:#018x} has base offset {base_offset}; the emulator \
             models tiles that start a 1024-byte swizzle period (base offset 0)"
        );
    }
    let start = ((desc & 0x3fff) << 4) as u32;
    if start % 128 > 128 - 2 * K as u32 {
        panic!(
            "{what}: descriptor {which} {desc:#018x} starts at {start:#x}, {} bytes into a \
             128-byte swizzled row: its 16 k (32 bytes) would cross into the next row",
            start % 128
        );
    }
    Operand {
        desc,
        start,
        sbo: (((desc >> 32) & 0x3fff) << 4) as u32,
    }
}

/// The (unswizzled) address of row `i` of an operand: its 128-byte line.
fn row_address(op: Operand, i: usize) -> u32 {
    op.start + (i as u32 / 8) * op.sbo + (i as u32 % 8) * 128
}

fn bf16(bits: u32) -> f64 {
    f64::from(f32::from_bits((bits & 0xffff) << 16))
}

/// Rows `0..rows` of a K-major 128B-swizzled operand, 16 k each, into `out[i·16 + k]`.
fn load_rows(
    what: &str,
    which: &str,
    shared: SharedWindow,
    op: Operand,
    rows: usize,
    out: &mut [f64],
) {
    for i in 0..rows {
        let row = row_address(op, i);
        for half in 0..2 {
            let addr = row + 16 * half;
            let at = addr ^ (((addr >> 7) & 7) << 4);
            if !shared.contains(at, 16) {
                panic!(
                    "{what}: operand {which} (descriptor {:#018x}) row {i}, k {}..{}: shared \
                     address {at:#x} is outside the block's shared memory",
                    op.desc,
                    8 * half,
                    8 * half + 8
                );
            }
            let mut w = [0u32; 4];
            shared.read(at, &mut w);
            for (p, word) in w.iter().enumerate() {
                let k = 8 * half as usize + 2 * p;
                out[i * K + k] = bf16(*word);
                out[i * K + k + 1] = bf16(word >> 16);
            }
        }
    }
}

/// A whole warpgroup (checked by every member).
fn check_whole(ex: &Exchange<'_>, what: &str) {
    let size = Group::Warpgroup.size();
    if ex.members() != size {
        panic!(
            "{what} needs a whole warpgroup (4 warps, {size} threads); this one has {} threads \
             (a block of {} threads)",
            ex.members(),
            ctx().block_dim.count()
        );
    }
}

/// Every member of the warpgroup took part (checked once, by the member that computes).
fn check_present(ex: &Exchange<'_>, what: &str) {
    let size = Group::Warpgroup.size();
    let present = (0..size).filter(|&m| ex.took_part(m)).count() as u32;
    if present != size {
        let gone = (0..size).find(|&m| !ex.took_part(m)).unwrap_or(0);
        panic!(
            "{what} issued by {present} of the warpgroup's {size} threads (thread {gone} of the \
             warpgroup has exited): all 4 warps issue it together"
        );
    }
}

/// Words `from..width` of every member equal to member 0's (the descriptors).
fn check_same(
    ex: &Exchange<'_>,
    what: &str,
    words: &[u32],
    width: usize,
    from: usize,
    label: &str,
) {
    let mine = &words[from..width];
    for m in 1..ex.members() as usize {
        let theirs = &words[m * width + from..(m + 1) * width];
        if theirs != mine {
            let d = |w: &[u32]| {
                w.chunks(2)
                    .map(|p| format!("{:#018x}", p[0] as u64 | (p[1] as u64) << 32))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            panic!(
                "{what}: the warpgroup's threads pass different descriptors ({label}: thread 0 \
                 {}; thread {m} {}); all 128 must pass the same",
                d(mine),
                d(theirs)
            );
        }
    }
}

/// The 64 × n tile `A·B` as f64 bits (two words each, row-major), then the id of the reads
/// (`race.rs`), from the whole warpgroup's words: `[a_lo, a_hi, b_lo, b_hi]` (A in shared
/// memory) or `[a0..a3, b_lo, b_hi]`.
fn product(
    ex: &Exchange<'_>,
    what: &'static str,
    n: usize,
    a_in_registers: bool,
    out: &mut Vec<u32>,
) {
    check_present(ex, what);
    let words = ex.all_words();
    let width = if a_in_registers { 6 } else { 4 };
    let b_at = width - 2;
    let shared = ex.shared();
    let desc = |at: usize| words[at] as u64 | (words[at + 1] as u64) << 32;
    let mut a = vec![0f64; M * K];
    let mut rows = Vec::with_capacity(M + n);
    if a_in_registers {
        check_same(ex, what, words, width, b_at, "B");
        for t in 0..128 {
            let (w, l) = (t / 32, t % 32);
            let (row, q) = (16 * w + l / 4, 2 * (l % 4));
            let r = &words[t * width..t * width + 4];
            for (reg, (i, k)) in [(row, q), (row + 8, q), (row, q + 8), (row + 8, q + 8)]
                .into_iter()
                .enumerate()
            {
                a[i * K + k] = bf16(r[reg]);
                a[i * K + k + 1] = bf16(r[reg] >> 16);
            }
        }
    } else {
        check_same(ex, what, words, width, 0, "A, B");
        let op = decode(what, "A", desc(0));
        load_rows(what, "A", shared, op, M, &mut a);
        rows.extend((0..M).map(|i| row_address(op, i)));
    }
    let mut b = vec![0f64; n * K];
    let op = decode(what, "B", desc(b_at));
    load_rows(what, "B", shared, op, n, &mut b);
    rows.extend((0..n).map(|j| row_address(op, j)));
    // The reads, checked against the copies that wrote those rows; the id (last word of the
    // result) lets each member's wait retire them.
    let c = ctx();
    let first = c.rank - ex.member();
    let threads = c.block_dim.count() as usize;
    let id = with_hopper(|h| h.races.read(threads, first, what, &rows));
    // B transposed (k-major rows of n), so the inner loop runs over contiguous columns.
    let mut bt = vec![0f64; K * n];
    for j in 0..n {
        for k in 0..K {
            bt[k * n + j] = b[j * K + k];
        }
    }
    out.reserve(2 * M * n);
    let mut row = [0f64; 256];
    for i in 0..M {
        let row = &mut row[..n];
        row.fill(-0.0);
        for k in 0..K {
            let aik = a[i * K + k];
            for (acc, bkj) in row.iter_mut().zip(&bt[k * n..(k + 1) * n]) {
                *acc += aik * bkj;
            }
        }
        for v in row.iter() {
            let bits = v.to_bits();
            out.push(bits as u32);
            out.push((bits >> 32) as u32);
        }
    }
    out.push(id);
}

/// Issues one `wgmma` for the calling thread: publishes `words`, then adds this thread's part
/// of the warpgroup's product to `d`.
fn issue(d: &mut [f32], n: usize, a_in_registers: bool, words: &[u32]) {
    let what = name(n, a_in_registers);
    if d.len() != n / 2 {
        panic!(
            "{what}: {} accumulators per thread, expected {}",
            d.len(),
            n / 2
        );
    }
    note_issue(what);
    let id = collective(what, Group::Warpgroup, words, |ex| {
        check_whole(ex, what);
        let tile = ex.once(|ex, out| product(ex, what, n, a_in_registers, out));
        let t = ex.member() as usize;
        let (w, l) = (t / 32, t % 32);
        for j in 0..n / 8 {
            for e in 0..4 {
                let row = 16 * w + l / 4 + 8 * (e / 2);
                let col = 8 * j + 2 * (l % 4) + e % 2;
                let at = 2 * (row * n + col);
                let p = f64::from_bits(tile[at] as u64 | (tile[at + 1] as u64) << 32);
                let acc = &mut d[4 * j + e];
                *acc = (p + f64::from(*acc)) as f32;
            }
        }
        tile[2 * M * n]
    });
    let rank = ctx().rank;
    with_hopper(|h| h.wgmma.of(rank).open.push(id));
}

fn split(desc: WgmmaDesc) -> [u32; 2] {
    [desc.0 as u32, (desc.0 >> 32) as u32]
}

/// `wgmma.mma_async…m64nNk16.f32.bf16.bf16 d, a-desc, b-desc`: `d += A·B`, A and B in shared
/// memory.
pub fn wgmma_ss<const L: usize>(d: &mut [f32; L], a: WgmmaDesc, b: WgmmaDesc, n: usize) {
    let [a0, a1] = split(a);
    let [b0, b1] = split(b);
    issue(d, n, false, &[a0, a1, b0, b1])
}

/// `wgmma.mma_async…m64nNk16.f32.bf16.bf16 d, {a0..a3}, b-desc`: `d += A·B`, A in registers.
pub fn wgmma_rs<const L: usize>(d: &mut [f32; L], a: [u32; 4], b: WgmmaDesc, n: usize) {
    let [b0, b1] = split(b);
    issue(d, n, true, &[a[0], a[1], a[2], a[3], b0, b1])
}
