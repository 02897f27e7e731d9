//! The emulator's Hopper model (`gpu_kernels::device::emu::hopper`): `mbarrier` phases and
//! transaction counts, TMA and bulk copies, and `wgmma`, each against the PTX ISA's rules
//! written out independently here (the expected swizzled box, the fragment layouts), then the
//! real kernels built on them (`gemm_wgmma`, `flash_attention`) against float64 references and
//! for batch invariance. Everything launches at the emulator level (`emu::launch`), with
//! tensor maps encoded by `TensorMap::emulated_2d` over host vectors. The misuse cases check
//! the emulator's exact messages, which name the block and, where one is to blame, the thread;
//! they include the races between copies and `wgmma`s that a pipeline's barriers fail to
//! order, while the real kernels (with K and key ranges long enough to refill every ring slot)
//! show that correct pipelines are not reported.

mod common;

use common::{rel_l2, rng};
use gpu_kernels::device::async_copy::{
    Mbarrier, Swizzle, TensorMap, bulk_load, fence_mbarrier_init, tma_load_2d,
};
use gpu_kernels::device::emu::{self, EmuError, LaunchConfig};
use gpu_kernels::device::tensor_core::{
    Accumulators, WgmmaDesc, wgmma_commit, wgmma_fence, wgmma_m64n64k16_rs, wgmma_m64n64k16_ss,
    wgmma_m64n128k16_rs, wgmma_m64n128k16_ss, wgmma_m64n256k16_rs, wgmma_m64n256k16_ss, wgmma_wait,
};
use gpu_kernels::device::{
    Dim3, In, Out, dynamic_shared, dynamic_shared_address, sync_threads, thread_idx,
};
use gpu_kernels::{flash_attention, gemm_wgmma, probe};
use half::bf16;
use kiln::rng::Rng;

fn cfg(grid: (u32, u32), threads: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: Dim3::new(grid.0, grid.1, 1),
        block: Dim3::new(threads, 1, 1),
        dynamic_shared_bytes: shared_bytes,
    }
}

fn expect_err(r: Result<(), EmuError>) -> String {
    match r {
        Ok(()) => panic!("the emulator accepted a launch it must reject"),
        Err(e) => e.0,
    }
}

/// 16-byte aligned storage (TMA and bulk sources must be 16-byte aligned; a `Vec<u16>` or
/// `Vec<u32>` is only promised its element's alignment).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u8; 16]);

struct Aligned<T> {
    chunks: Vec<Chunk>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

type Bf16Tensor = Aligned<u16>;

impl<T: Copy> Aligned<T> {
    fn new(v: &[T]) -> Self {
        let bytes = std::mem::size_of_val(v);
        let mut chunks = vec![Chunk([0; 16]); bytes.div_ceil(16)];
        // SAFETY: `chunks` holds at least `bytes` bytes; both regions are plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.as_ptr().cast::<u8>(),
                chunks.as_mut_ptr().cast(),
                bytes,
            )
        };
        Aligned {
            chunks,
            len: v.len(),
            _t: std::marker::PhantomData,
        }
    }
    fn get(&self) -> &[T] {
        // SAFETY: the first `len` elements were copied in from a `[T]`; 16-byte alignment
        // covers `T`'s.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast(), self.len) }
    }
}

impl Aligned<u16> {
    fn bits(&self) -> &[u16] {
        self.get()
    }
    /// The map of the `[rows][cols]` tensor starting at element `from` (row-major, dense).
    fn map(&self, from: usize, cols: u64, rows: u64, box_cols: u32, box_rows: u32) -> TensorMap {
        let s = &self.bits()[from..];
        TensorMap::emulated_2d(
            s.as_ptr() as u64,
            2,
            cols,
            rows,
            2 * cols,
            box_cols,
            box_rows,
            Swizzle::B128,
        )
        .with_extent(2 * s.len() as u64)
    }
}

/// `n` random bf16 (N(0, std²) rounded): the bits and their exact values.
fn random_bf16(r: &mut Rng, n: usize, std: f64) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| bf16::from_f64(r.normal() * std).to_bits())
        .collect();
    let vals = bits.iter().map(|b| bf16::from_bits(*b).to_f64()).collect();
    (bits, vals)
}

fn bf16_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|b| bf16::from_bits(*b).to_f32()).collect()
}

/// Where accumulator `i` of warpgroup thread `t` sits in the 64 × N tile (PTX ISA, "Matrix
/// fragments for wgmma.mma_async", m64nNk16 D): (row, column).
fn fragment_position(t: usize, i: usize) -> (usize, usize) {
    let (w, l, j, e) = (t / 32, t % 32, i / 4, i % 4);
    (16 * w + l / 4 + 8 * (e / 2), 8 * j + 2 * (l % 4) + e % 2)
}

// ---------------------------------------------------------------------------------------------
// mbarrier
// ---------------------------------------------------------------------------------------------

/// One thread walks two barriers through their phases, recording `try_wait` as it goes.
fn mbarrier_walk(src: In<u32>, rec: Out<u32>, landed: Out<u32>) {
    let base = dynamic_shared_address();
    let (bar, tx) = (Mbarrier(base), Mbarrier(base + 8));
    let mut n = 0;
    let mut log = |v: bool| {
        rec.set(n, v as u32);
        n += 1;
    };
    bar.init(2);
    log(bar.try_wait(0)); // 0: phase 0 incomplete
    log(bar.try_wait(1)); // 1: "the phase before 0" counts as complete
    bar.arrive();
    log(bar.try_wait(0)); // 0: one arrival of two
    bar.arrive();
    log(bar.try_wait(0)); // 1: phase 0 complete
    log(bar.try_wait(1)); // 0: phase 1 incomplete
    bar.arrive();
    bar.arrive();
    log(bar.try_wait(0)); // 0: phase 2 (parity 0) incomplete
    log(bar.try_wait(1)); // 1: phase 1 complete
    // Bytes announced, then landed.
    tx.init(1);
    tx.arrive_expect_tx(64);
    log(tx.try_wait(0)); // 0: arrived, 64 bytes outstanding
    bulk_load(base + 256, src, 64, tx);
    log(tx.try_wait(0)); // 1
    // Bytes landed before they are announced (the count goes negative).
    bulk_load(base + 512, src.offset(16), 32, tx);
    log(tx.try_wait(1)); // 0: 32 bytes landed, nobody arrived
    tx.arrive_expect_tx(32);
    log(tx.try_wait(1)); // 1
    tx.wait(1);
    let words = dynamic_shared::<u32>(256);
    for i in 0..16 {
        landed.set(i, words.load(64 + i));
    }
    for i in 0..8 {
        landed.set(16 + i, words.load(128 + i));
    }
}

#[test]
fn mbarrier_phases_parity_and_transaction_bytes() {
    let src = Aligned::new(&(0..32).map(|i| 1000 + i).collect::<Vec<u32>>());
    let mut rec = vec![9u32; 11];
    let mut landed = vec![0u32; 24];
    let (s, r, l) = (
        In::from_slice(src.get()),
        Out::from_slice(&mut rec),
        Out::from_slice(&mut landed),
    );
    emu::launch(cfg((1, 1), 1, 1024), || mbarrier_walk(s, r, l)).unwrap();
    assert_eq!(rec, [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1]);
    let want: Vec<u32> = (1000..1016).chain(1016..1024).collect();
    assert_eq!(landed, want);
}

#[test]
fn probe_mbarrier_completes_when_every_thread_arrives() {
    for threads in [32, 96, 256] {
        let mut out = vec![0u32; 1];
        let o = Out::from_slice(&mut out);
        emu::launch(cfg((2, 1), threads, probe::PROBE_SHARED_BYTES), || {
            probe::probe_mbarrier(o)
        })
        .unwrap();
        assert_eq!(out, [1], "{threads} threads");
    }
}

/// Misuse of a barrier, by case.
fn mbarrier_misuse(src: In<u32>, case: u32) {
    let base = dynamic_shared_address();
    let bar = Mbarrier(base);
    let t = thread_idx().x;
    match case {
        // Waiting on a barrier nobody initialised.
        0 => Mbarrier(base + 64).wait(0),
        // An extra arrival: the only expected one has come, the phase waits for bytes.
        1 => {
            if t == 0 {
                bar.init(1);
                fence_mbarrier_init();
            }
            sync_threads();
            if t == 0 {
                bar.arrive_expect_tx(64);
            }
            sync_threads();
            if t == 1 {
                bar.arrive();
            }
        }
        // Bytes announced that no copy delivers (nobody waits, so the block ends).
        2 => {
            if t == 0 {
                bar.init(1);
                bar.arrive_expect_tx(48);
            }
        }
        // Bytes landed that nobody announced.
        3 => {
            if t == 0 {
                bar.init(1);
                bulk_load(base + 128, src, 64, bar);
                bar.arrive();
            }
        }
        // Re-initialised with an arrival pending.
        4 => {
            if t == 0 {
                bar.init(2);
                bar.arrive();
                bar.init(2);
            }
        }
        // A wait that nothing will satisfy.
        5 => {
            if t == 0 {
                bar.init(2);
                bar.arrive();
            }
            sync_threads();
            bar.wait(0);
        }
        _ => unreachable!(),
    }
}

#[test]
fn mbarrier_misuse_is_reported_with_block_and_thread() {
    let src = Aligned::new(&[7u32; 64]);
    let s = In::from_slice(src.get());
    let run = |case: u32, grid: u32| {
        expect_err(emu::launch(cfg((grid, 1), 64, 1024), || {
            mbarrier_misuse(s, case)
        }))
    };
    assert_eq!(
        run(0, 1),
        "block (0, 0, 0) thread (0, 0, 0): mbarrier.try_wait.parity on shared address 0x40, which \
         no mbarrier.init has initialised (in this block)"
    );
    assert_eq!(
        run(1, 1),
        "block (0, 0, 0) thread (1, 0, 0): mbarrier.arrive on the mbarrier at 0x0: more arrivals \
         than the 1 expected in phase 0 (all have arrived; the phase waits on 64 transaction \
         bytes announced but not landed)"
    );
    assert_eq!(
        run(2, 1),
        "block (0, 0, 0): the mbarrier at 0x0 ended with 48 transaction bytes announced (by thread \
         (0, 0, 0)) in phase 0 that never landed: no copy delivered them"
    );
    assert_eq!(
        run(3, 1),
        "block (0, 0, 0): the mbarrier at 0x0 ended with 64 bytes landed in phase 0 that no \
         arrive.expect_tx announced"
    );
    assert_eq!(
        run(4, 1),
        "block (0, 0, 0) thread (0, 0, 0): mbarrier.init at 0x0 re-initialises a barrier with work \
         pending (phase 0: 1 of 2 arrivals pending, no transaction bytes outstanding); wait for \
         the phase to complete (or mbarrier.inval) first"
    );
    // Odd blocks run their threads in reverse order; the report is the same.
    assert_eq!(
        run(5, 2),
        "block (0, 0, 0): deadlock: mbarrier.try_wait.parity polled in vain by 64 of 64 live \
         threads; 64 threads wait on the mbarrier at 0x0 (phase 0: 1 of 2 arrivals pending, no \
         transaction bytes outstanding)"
    );
}

// ---------------------------------------------------------------------------------------------
// TMA and bulk copies
// ---------------------------------------------------------------------------------------------

/// The box at (`x`, `y`) (signed) of the `[rows][cols]` bf16 tensor `t`, as TMA lays it out in
/// shared memory, written from the CUDA description rather than the emulator's code: box row
/// `r` takes 128 bytes, and with the 128-byte swizzle its 16-byte chunk `c` (elements
/// `8c..8c + 8` of the row) is stored as chunk `c ^ (r % 8)`; without a swizzle rows are
/// packed. Outside the tensor: zeros.
#[allow(clippy::too_many_arguments)]
fn expected_box(
    t: &[u16],
    cols: usize,
    rows: usize,
    x: i64,
    y: i64,
    box_cols: usize,
    box_rows: usize,
    swizzled: bool,
) -> Vec<u32> {
    let at = |r: usize, c: usize| -> u16 {
        let (gy, gx) = (y + r as i64, x + c as i64);
        if gy < 0 || gx < 0 || gy >= rows as i64 || gx >= cols as i64 {
            0
        } else {
            t[gy as usize * cols + gx as usize]
        }
    };
    let mut out = vec![0u16; box_cols * box_rows];
    for r in 0..box_rows {
        for c in 0..box_cols {
            let slot = if swizzled {
                let (chunk, e) = (c / 8, c % 8);
                r * 64 + 8 * (chunk ^ (r % 8)) + e
            } else {
                r * box_cols + c
            };
            out[slot] = at(r, c);
        }
    }
    out.chunks(2)
        .map(|p| p[0] as u32 | (p[1] as u32) << 16)
        .collect()
}

#[test]
fn tma_box_is_swizzled_and_zero_filled_outside_the_tensor() {
    let mut r = rng(1);
    let (cols, rows) = (104usize, 50usize);
    let (bits, _) = random_bf16(&mut r, cols * rows, 1.0);
    let t = Bf16Tensor::new(&bits);
    // (x, y, box cols, box rows, swizzle): partly outside on the right and below; inside;
    // packed rows of 48 bytes starting two rows above the tensor (coordinates are signed).
    let cases: [(i32, i32, u32, u32, bool); 3] = [
        (64, 40, 64, 16, true),
        (8, 3, 64, 24, true),
        (96, -2, 24, 5, false),
    ];
    for (x, y, bc, br, swizzled) in cases {
        let mut map = t.map(0, cols as u64, rows as u64, bc, br);
        if !swizzled {
            map = TensorMap::emulated_2d(
                t.bits().as_ptr() as u64,
                2,
                cols as u64,
                rows as u64,
                2 * cols as u64,
                bc,
                br,
                Swizzle::None,
            );
        }
        let maps = [map];
        let box_bytes = 2 * bc * br;
        let mut out = vec![u32::MAX; box_bytes as usize / 4];
        let (m, o) = (In::from_slice(&maps), Out::from_slice(&mut out));
        emu::launch(cfg((1, 1), 64, probe::PROBE_SHARED_BYTES), || {
            probe::probe_tma_load(m, o, x as u32, y as u32, box_bytes)
        })
        .unwrap();
        let want = expected_box(
            t.bits(),
            cols,
            rows,
            x as i64,
            y as i64,
            bc as usize,
            br as usize,
            swizzled,
        );
        assert_eq!(out, want, "box {bc} × {br} at ({x}, {y})");
    }
}

/// Thread 0 loads `map`'s box at (0, 0) into `dst` on a barrier at `bar`, announcing
/// `announce` bytes; everyone waits.
fn tma_into(map: In<TensorMap>, dst: u32, bar: u32, announce: u32) {
    let bar = Mbarrier(bar);
    if thread_idx().x == 0 {
        bar.init(1);
        bar.arrive_expect_tx(announce);
        tma_load_2d(dst, map, 0, 0, bar);
    }
    sync_threads();
    bar.wait(0);
}

#[test]
fn tma_misuse_is_reported() {
    let bits = vec![0x3f80u16; 100 * 64];
    let t = Bf16Tensor::new(&bits);
    let run = |map: TensorMap, dst: u32, bar: u32, shared: u32| {
        let maps = [map];
        let m = In::from_slice(&maps);
        expect_err(emu::launch(cfg((1, 1), 32, shared), || {
            tma_into(m, dst, bar, 8192)
        }))
    };
    let good = t.map(0, 64, 100, 64, 64);
    let prefix = "block (0, 0, 0) thread (0, 0, 0): cp.async.bulk.tensor.2d: ";
    // A map encoded for the GPU: opaque words, no magic.
    let gpu = TensorMap([0x1234_5678_9abc_def0; 16]);
    let msg = run(gpu, 0, 16384, 16392);
    assert_eq!(
        msg,
        format!(
            "{prefix}the tensor map's word 0 is 0x123456789abcdef0, not \
             EMULATED_TENSOR_MAP_MAGIC: a map encoded for the GPU (cuTensorMapEncodeTiled) \
             reached the emulator; encode it with TensorMap::emulated_2d"
        )
    );
    // A 128B-swizzled box must start a 1024-byte period.
    assert_eq!(
        run(good, 512, 16384, 16392),
        format!("{prefix}shared destination 0x200 is not 1024-byte aligned")
    );
    // The box (8 KiB) does not fit the 4 KiB of shared memory.
    assert_eq!(
        run(good, 0, 4000, 4096),
        format!("{prefix}8192 bytes at shared address 0x0 do not fit in the block's shared memory")
    );
    // The box lands on its own barrier.
    assert_eq!(
        run(good, 0, 1024, 16384),
        format!("{prefix}the copy into shared [0x0, 0x2000) overwrites the mbarrier at 0x400")
    );
    // A row stride that is not a multiple of 16 bytes (100 bf16 = 200 bytes).
    let odd = TensorMap::emulated_2d(
        t.bits().as_ptr() as u64,
        2,
        100,
        64,
        200,
        64,
        64,
        Swizzle::B128,
    );
    assert_eq!(
        run(odd, 0, 16384, 16392),
        format!(
            "{prefix}invalid tensor map: row stride 200 bytes: must be a multiple of 16, below \
             2^40, and at least the 200 bytes of a row (100 elements of 2 bytes)"
        )
    );
    // A tensor larger than the buffer it was made over.
    let short = t.map(64, 64, 100, 64, 64);
    assert_eq!(
        run(short, 0, 16384, 16392),
        format!(
            "{prefix}invalid tensor map: its 100 rows of 128-byte stride need 12800 bytes from \
             the base, but the buffer it was made over has 12672"
        )
    );
    // 256-byte box rows with the 128-byte swizzle.
    let wide = t.map(0, 64, 100, 128, 8);
    let msg = run(wide, 0, 16384, 16392);
    assert!(
        msg.ends_with("box rows of 256 bytes with the 128-byte swizzle (at most 128)"),
        "{msg}"
    );
}

#[test]
fn probe_bulk_load_copies_bytes_and_checks_its_operands() {
    let mut r = rng(2);
    let src = Aligned::new(&(0..1036).map(|_| r.next_u64() as u32).collect::<Vec<u32>>());
    let src = src.get();
    let bytes = 4 * 1036u32; // 4144, a multiple of 16
    let mut out = vec![0u32; 1036];
    let (s, o) = (In::from_slice(src), Out::from_slice(&mut out));
    emu::launch(cfg((1, 1), 96, probe::PROBE_SHARED_BYTES), || {
        probe::probe_bulk_load(s, o, bytes)
    })
    .unwrap();
    assert_eq!(out, src);
    let run = |bytes: u32| {
        expect_err(emu::launch(
            cfg((1, 1), 32, probe::PROBE_SHARED_BYTES),
            || probe::probe_bulk_load(s, o, bytes),
        ))
    };
    assert_eq!(
        run(40),
        "block (0, 0, 0) thread (0, 0, 0): cp.async.bulk: size 40 bytes is not a multiple of 16"
    );
    assert_eq!(
        run(bytes + 16),
        "block (0, 0, 0) thread (0, 0, 0): cp.async.bulk: copies 4160 bytes from a global buffer \
         of 4144 bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// wgmma
// ---------------------------------------------------------------------------------------------

/// A (64 × 64) and B (`n` × 64, like `w[n][k]`) with their exact values, and the maps.
struct Operands {
    a: Bf16Tensor,
    b: Bf16Tensor,
    a_vals: Vec<f64>,
    b_vals: Vec<f64>,
    n: usize,
}

impl Operands {
    fn new(salt: u64, n: usize) -> Self {
        let mut r = rng(salt);
        let (a, a_vals) = random_bf16(&mut r, 64 * 64, 1.0);
        let (b, b_vals) = random_bf16(&mut r, n * 64, 1.0);
        Operands {
            a: Bf16Tensor::new(&a),
            b: Bf16Tensor::new(&b),
            a_vals,
            b_vals,
            n,
        }
    }
    fn maps(&self) -> [TensorMap; 2] {
        [
            self.a.map(0, 64, 64, 64, 64),
            self.b.map(0, 64, self.n as u64, 64, self.n as u32),
        ]
    }
    /// `C + A·Bᵀ` in f64, row-major 64 × n.
    fn reference(&self, c: &[f64]) -> Vec<f64> {
        let mut d = c.to_vec();
        for i in 0..64 {
            for j in 0..self.n {
                d[i * self.n + j] += (0..64)
                    .map(|k| self.a_vals[i * 64 + k] * self.b_vals[j * 64 + k])
                    .sum::<f64>();
            }
        }
        d
    }
    /// The register-A fragments of every thread for the four k16 steps, `[kk][t][4]` (PTX ISA,
    /// wgmma register A for `.bf16`: the `mma.m16n8k16` A fragment of the warp's 16 rows).
    fn a_fragments(&self) -> Vec<u32> {
        let a = self.a.bits();
        let pair = |i: usize, k: usize| a[i * 64 + k] as u32 | (a[i * 64 + k + 1] as u32) << 16;
        let mut out = Vec::with_capacity(4 * 128 * 4);
        for kk in 0..4 {
            for t in 0..128 {
                let (w, l) = (t / 32, t % 32);
                let (g, q) = (16 * w + l / 4, 16 * kk + 2 * (l % 4));
                out.extend([
                    pair(g, q),
                    pair(g + 8, q),
                    pair(g, q + 8),
                    pair(g + 8, q + 8),
                ]);
            }
        }
        out
    }
}

/// How a test kernel issues one k16 step for a 64 × N tile (`L = N / 2` accumulators).
#[derive(Clone, Copy)]
enum Step<const L: usize> {
    Ss(fn(&mut [f32; L], WgmmaDesc, WgmmaDesc)),
    Rs(fn(&mut [f32; L], [u32; 4], WgmmaDesc)),
}

/// One warpgroup: A and B by TMA, accumulators from `c[t][L]`, four k16 steps over K = 64,
/// then `out[t][L]`.
fn wgmma_kernel<const L: usize>(
    maps: In<TensorMap>,
    a_frags: In<u32>,
    c: In<f32>,
    out: Out<f32>,
    step: Step<L>,
) {
    let (a_tile, b_tile, bar) = (0, 8192, Mbarrier(8192 + 32768));
    let t = thread_idx().x as usize;
    if t == 0 {
        bar.init(1);
        bar.arrive_expect_tx((8192 + L * 256) as u32);
        tma_load_2d(a_tile, maps, 0, 0, bar);
        tma_load_2d(b_tile, maps.offset(1), 0, 0, bar);
    }
    sync_threads();
    bar.wait(0);
    let mut acc = [0.0f32; L];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = c.at(t * L + i);
    }
    let a = WgmmaDesc::k_major_swizzle_128b(a_tile);
    let b = WgmmaDesc::k_major_swizzle_128b(b_tile);
    wgmma_fence();
    for kk in 0..4u32 {
        match step {
            Step::Ss(f) => f(&mut acc, a.advance(32 * kk), b.advance(32 * kk)),
            Step::Rs(f) => {
                let at = (kk as usize * 128 + t) * 4;
                let regs = [
                    a_frags.at(at),
                    a_frags.at(at + 1),
                    a_frags.at(at + 2),
                    a_frags.at(at + 3),
                ];
                f(&mut acc, regs, b.advance(32 * kk))
            }
        }
    }
    wgmma_commit();
    wgmma_wait::<0>();
    for (i, v) in acc.iter().enumerate() {
        out.set(t * L + i, *v);
    }
}

/// Runs `step` on fresh operands with accumulators `C` and checks `C + A·Bᵀ` and the layout.
fn check_wgmma<const L: usize>(salt: u64, step: Step<L>, label: &str) {
    let n = 2 * L;
    let ops = Operands::new(salt, n);
    let maps = ops.maps();
    let frags = ops.a_fragments();
    let mut r = rng(salt + 100);
    let c: Vec<f32> = r.normal_vec(128 * L, 1.0);
    let mut out = vec![f32::NAN; 128 * L];
    // C and the result as 64 × n tiles, through the fragment layout.
    let mut c_tile = vec![f64::NAN; 64 * n];
    for t in 0..128 {
        for i in 0..L {
            let (row, col) = fragment_position(t, i);
            assert!(c_tile[row * n + col].is_nan(), "fragment layout overlaps");
            c_tile[row * n + col] = c[t * L + i] as f64;
        }
    }
    let (m, f, ci, o) = (
        In::from_slice(&maps),
        In::from_slice(&frags),
        In::from_slice(&c),
        Out::from_slice(&mut out),
    );
    emu::launch(cfg((1, 1), 128, 8192 + 32768 + 64), || {
        wgmma_kernel(m, f, ci, o, step)
    })
    .unwrap();
    let want = ops.reference(&c_tile);
    let mut got = vec![f32::NAN; 64 * n];
    for t in 0..128 {
        for i in 0..L {
            let (row, col) = fragment_position(t, i);
            got[row * n + col] = out[t * L + i];
        }
    }
    let err = rel_l2(&got, &want);
    assert!(err < 1e-6, "{label}: rel L2 {err:.3e}");
}

#[test]
fn wgmma_every_shape_and_a_source_matches_float64() {
    check_wgmma::<32>(10, Step::Ss(wgmma_m64n64k16_ss), "m64n64k16 SS");
    check_wgmma::<64>(11, Step::Ss(wgmma_m64n128k16_ss), "m64n128k16 SS");
    check_wgmma::<128>(12, Step::Ss(wgmma_m64n256k16_ss), "m64n256k16 SS");
    check_wgmma::<32>(13, Step::Rs(wgmma_m64n64k16_rs), "m64n64k16 RS");
    check_wgmma::<64>(14, Step::Rs(wgmma_m64n128k16_rs), "m64n128k16 RS");
    check_wgmma::<128>(15, Step::Rs(wgmma_m64n256k16_rs), "m64n256k16 RS");
}

#[test]
fn probe_wgmma_matches_float64() {
    // probe_wgmma: A 64 × 64 (box 64 × 64), B 128 × 64 (box 64 × 128), acc from zero.
    let ops = Operands::new(20, 128);
    let maps = ops.maps();
    let mut out = vec![f32::NAN; 128 * 64];
    let (ma, mb, o) = (
        In::from_slice(&maps[..1]),
        In::from_slice(&maps[1..]),
        Out::from_slice(&mut out),
    );
    emu::launch(cfg((1, 1), 128, probe::PROBE_SHARED_BYTES), || {
        probe::probe_wgmma(ma, mb, o)
    })
    .unwrap();
    let want = ops.reference(&vec![0.0; 64 * 128]);
    let mut got = vec![f32::NAN; 64 * 128];
    for t in 0..128 {
        for i in 0..64 {
            let (row, col) = fragment_position(t, i);
            got[row * 128 + col] = out[t * 64 + i];
        }
    }
    let err = rel_l2(&got, &want);
    assert!(err < 1e-6, "probe_wgmma: rel L2 {err:.3e}");
}

/// A 64 × 128 SS step with one thing wrong, by case.
fn wgmma_misuse(maps: In<TensorMap>, case: u32) {
    let (a_tile, b_tile, bar) = (0, 8192, Mbarrier(8192 + 16384));
    let t = thread_idx().x;
    if t == 0 {
        bar.init(1);
        bar.arrive_expect_tx(8192 + 16384);
        tma_load_2d(a_tile, maps, 0, 0, bar);
        tma_load_2d(b_tile, maps.offset(1), 0, 0, bar);
    }
    sync_threads();
    match case {
        // Nobody waits for the copies: the block barrier orders their issue, not their landing.
        7 => {}
        // Only thread 0 waits, then a block barrier hands what it saw to everyone: correct.
        9 => {
            if t == 0 {
                bar.wait(0);
            }
            sync_threads();
        }
        _ => bar.wait(0),
    }
    let mut acc = [0.0f32; 64];
    acc.keep_in_registers();
    let a = WgmmaDesc::k_major_swizzle_128b(a_tile);
    let mut b = WgmmaDesc::k_major_swizzle_128b(b_tile);
    match case {
        // Warp 1 steps its B descriptor on by one k16 step.
        0 if t / 32 == 1 => b = b.advance(32),
        // Warps 2 and 3 leave before the product.
        2 if t >= 64 => return,
        _ => {}
    }
    let a = match case {
        // No swizzle (mode 0): a layout the emulator does not model.
        1 => WgmmaDesc(a.0 & !(3 << 62)),
        // A tile starting past the end of shared memory.
        6 => WgmmaDesc::k_major_swizzle_128b(64 * 1024),
        _ => a,
    };
    if case != 3 {
        wgmma_fence();
    }
    wgmma_m64n128k16_ss(&mut acc, a, b);
    if case == 5 {
        wgmma_wait::<0>();
    }
    // Thread 0 reloads B while the product may still be reading it (before the wait).
    if case == 8 && t == 0 {
        wgmma_commit();
        bar.arrive_expect_tx(16384);
        tma_load_2d(b_tile, maps.offset(1), 0, 0, bar);
    }
    if case != 4 {
        wgmma_commit();
        wgmma_wait::<0>();
    }
}

#[test]
fn wgmma_misuse_is_reported() {
    let ops = Operands::new(30, 128);
    let maps = ops.maps();
    let m = In::from_slice(&maps);
    let run = |case: u32, threads: u32| {
        expect_err(emu::launch(cfg((1, 1), threads, 8192 + 16384 + 64), || {
            wgmma_misuse(m, case)
        }))
    };
    let what = "wgmma.mma_async.m64n128k16 (A, B in shared memory)";
    // Scheduling is deterministic, so is the thread that reports: in block 0, thread 127
    // passes the block barrier last and runs on to the wgmma first; then threads 0..=126
    // arrive, and 126, the last, computes the product for all (and checks the operands).
    assert_eq!(
        run(0, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what}: the warpgroup's threads pass different \
             descriptors (A, B: thread 0 0x4000004000010000, 0x4000004000010200; thread 32 \
             0x4000004000010000, 0x4000004000010202); all 128 must pass the same"
        )
    );
    assert_eq!(
        run(1, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what}: descriptor A 0x0000004000010000 has \
             swizzle mode 0 (no swizzle); the emulator models only the K-major 128-byte \
             swizzle (mode 1, what WgmmaDesc::k_major_swizzle_128b builds)"
        )
    );
    assert_eq!(
        run(2, 128),
        format!(
            "block (0, 0, 0) thread (0, 0, 0): {what} issued by 64 of the warpgroup's 128 \
             threads (thread 64 of the warpgroup has exited): all 4 warps issue it together"
        )
    );
    // A block of 64 threads has no whole warpgroup (the probe, launched too small).
    let mut out = vec![0.0f32; 128 * 64];
    let (ma, mb, o) = (
        In::from_slice(&maps[..1]),
        In::from_slice(&maps[1..]),
        Out::from_slice(&mut out),
    );
    let msg = expect_err(emu::launch(
        cfg((1, 1), 64, probe::PROBE_SHARED_BYTES),
        || probe::probe_wgmma(ma, mb, o),
    ));
    assert_eq!(
        msg,
        format!(
            "block (0, 0, 0) thread (63, 0, 0): {what} needs a whole warpgroup (4 warps, 128 \
             threads); this one has 64 threads (a block of 64 threads)"
        )
    );
    assert_eq!(
        run(3, 128),
        format!(
            "block (0, 0, 0) thread (127, 0, 0): {what} without a wgmma.fence before it: the first \
             wgmma of a thread, and the first after a wgmma.wait_group, must follow a wgmma.fence"
        )
    );
    assert_eq!(
        run(4, 128),
        "block (0, 0, 0): thread (0, 0, 0) exited with wgmma work not waited for (1 wgmma not \
         committed, 0 committed groups not waited for): end with wgmma.commit_group and \
         wgmma.wait_group 0"
    );
    assert_eq!(
        run(5, 128),
        "block (0, 0, 0) thread (126, 0, 0): wgmma.wait_group 0 with 1 wgmma not committed: \
         wait_group covers committed groups only (wgmma.commit_group first)"
    );
    // Races between copies and products, found by happens-before, not by luck of scheduling.
    assert_eq!(
        run(7, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what} reads shared memory at 0x0, which \
             cp.async.bulk.tensor.2d fills on the mbarrier at 0x6000 in phase 0, but no thread \
             of the warpgroup (threads 0..=127) has waited for that phase to complete"
        )
    );
    assert_eq!(
        run(8, 128),
        format!(
            "block (0, 0, 0) thread (0, 0, 0): cp.async.bulk.tensor.2d into shared [0x2000, \
             0x6000) overwrites bytes at 0x2000 that a {what} of warpgroup 0 (threads 0..=127) \
             may still be reading: no thread of that warpgroup retired it (wgmma.wait_group) and \
             then released the buffer to this thread (mbarrier arrive → wait, or sync_threads) \
             before the copy was issued"
        )
    );
    emu::launch(cfg((1, 1), 128, 8192 + 16384 + 64), || wgmma_misuse(m, 9)).unwrap();
    assert_eq!(
        run(6, 128),
        format!(
            "block (0, 0, 0) thread (126, 0, 0): {what}: operand A (descriptor \
             0x4000004000011000) row 0, k 0..8: shared address 0x10000 is outside the block's \
             shared memory"
        )
    );
}

// ---------------------------------------------------------------------------------------------
// The Hopper GEMM on the emulator
// ---------------------------------------------------------------------------------------------

/// A GEMM problem: x `[rows][k]`, w `[m][k]` (bf16), bias `[m]`, residual y `[rows][m]`.
struct Gemm {
    rows: usize,
    m: usize,
    k: usize,
    x: Bf16Tensor,
    w: Bf16Tensor,
    x_vals: Vec<f64>,
    w_vals: Vec<f64>,
    bias: Vec<f32>,
    y0: Vec<f32>,
}

impl Gemm {
    fn new(salt: u64, rows: usize, m: usize, k: usize) -> Self {
        let mut r = rng(salt);
        let (x, x_vals) = random_bf16(&mut r, rows * k, 1.0);
        let (w, w_vals) = random_bf16(&mut r, m * k, 1.0 / (k as f64).sqrt());
        Gemm {
            rows,
            m,
            k,
            x: Bf16Tensor::new(&x),
            w: Bf16Tensor::new(&w),
            x_vals,
            w_vals,
            bias: r.normal_vec(m, 1.0),
            y0: r.normal_vec(rows * m, 1.0),
        }
    }

    /// `x · wᵀ` for rows `0..rows` (f64).
    fn product(&self) -> Vec<f64> {
        let (m, k) = (self.m, self.k);
        let mut y = vec![0.0; self.rows * m];
        for r in 0..self.rows {
            for c in 0..m {
                y[r * m + c] = (0..k)
                    .map(|i| self.x_vals[r * k + i] * self.w_vals[c * k + i])
                    .sum();
            }
        }
        y
    }

    /// Runs `gemm_wgmma_f32` over rows `from..from + rows` of x with `flags`; y starts as the
    /// matching rows of `y0`.
    fn run_f32(&self, from: usize, rows: usize, flags: u32) -> Vec<f32> {
        let (m, k) = (self.m, self.k);
        let maps = [
            self.x
                .map(from * k, k as u64, rows as u64, 64, gemm_wgmma::BM as u32),
            self.w.map(0, k as u64, m as u64, 64, gemm_wgmma::BN as u32),
        ];
        let mut y = self.y0[from * m..(from + rows) * m].to_vec();
        let (mx, mw, b, yo) = (
            In::from_slice(&maps[..1]),
            In::from_slice(&maps[1..]),
            In::from_slice(&self.bias),
            Out::from_slice(&mut y),
        );
        let grid = (
            m.div_ceil(gemm_wgmma::BN) as u32,
            rows.div_ceil(gemm_wgmma::BM) as u32,
        );
        emu::launch(
            cfg(grid, gemm_wgmma::THREADS, gemm_wgmma::SHARED_BYTES),
            || gemm_wgmma::gemm_wgmma_f32(mx, mw, b, yo, rows as u32, m as u32, k as u32, flags),
        )
        .unwrap();
        y
    }
}

#[test]
fn gemm_wgmma_f32_matches_float64_with_bias_and_residual() {
    let both = gemm_wgmma::EPI_BIAS | gemm_wgmma::EPI_ADD_TO_Y;
    for (i, (rows, m, k, flags)) in [
        (1, 128, 64, both),
        (7, 200, 72, both),
        (129, 128, 136, both),
        (129, 200, 64, 0),
        // 12 K slices through the 5-slot ring: every slot refilled twice.
        (9, 128, 712, both),
    ]
    .into_iter()
    .enumerate()
    {
        let g = Gemm::new(40 + i as u64, rows, m, k);
        let got = g.run_f32(0, rows, flags);
        let mut want = g.product();
        for r in 0..rows {
            for c in 0..m {
                if flags & gemm_wgmma::EPI_BIAS != 0 {
                    want[r * m + c] += g.bias[c] as f64;
                }
                if flags & gemm_wgmma::EPI_ADD_TO_Y != 0 {
                    want[r * m + c] += g.y0[r * m + c] as f64;
                }
            }
        }
        let err = rel_l2(&got, &want);
        assert!(
            err < 1e-6,
            "gemm_wgmma_f32 {rows}×{m}×{k} flags {flags}: rel L2 {err:.3e}"
        );
    }
}

#[test]
fn gemm_wgmma_f32_rows_are_bit_identical_at_any_tile_position() {
    let (rows, m, k) = (130, 200, 136);
    let flags = gemm_wgmma::EPI_BIAS | gemm_wgmma::EPI_ADD_TO_Y;
    let g = Gemm::new(50, rows, m, k);
    let all = g.run_f32(0, rows, flags);
    // (first row, rows): single rows at other tile positions, and a short run across one.
    for (from, n) in [
        (0, 1),
        (3, 1),
        (77, 1),
        (127, 1),
        (128, 1),
        (129, 1),
        (60, 7),
    ] {
        let part = g.run_f32(from, n, flags);
        let want = &all[from * m..(from + n) * m];
        assert_eq!(
            common::bits(&part),
            common::bits(want),
            "rows {from}..{} alone differ from the same rows of the {rows}-row call",
            from + n
        );
    }
}

#[test]
fn gemm_wgmma_swiglu_matches_float64() {
    // SwiGLU: gate|up interleaved in blocks of 64 rows of w (rows 128i.. gate features 64i..,
    // the next 64 up), features past m zero (the last block padded).
    for (i, (rows, m, k)) in [(5, 128, 64), (129, 200, 72)].into_iter().enumerate() {
        let mut r = rng(70 + i as u64);
        let (x, x_vals) = random_bf16(&mut r, rows * k, 1.0);
        let (gate, gate_vals) = random_bf16(&mut r, m * k, 1.0 / (k as f64).sqrt());
        let (up, up_vals) = random_bf16(&mut r, m * k, 1.0 / (k as f64).sqrt());
        let blocks = m.div_ceil(64);
        let mut w = vec![0u16; blocks * 128 * k];
        for f in 0..m {
            let (blk, o) = (f / 64, f % 64);
            w[(blk * 128 + o) * k..][..k].copy_from_slice(&gate[f * k..][..k]);
            w[(blk * 128 + 64 + o) * k..][..k].copy_from_slice(&up[f * k..][..k]);
        }
        let (x, w) = (Bf16Tensor::new(&x), Bf16Tensor::new(&w));
        let maps = [
            x.map(0, k as u64, rows as u64, 64, 128),
            w.map(0, k as u64, (blocks * 128) as u64, 64, 128),
        ];
        let mut h = vec![0xffffu16; rows * m];
        let (mx, mw, ho) = (
            In::from_slice(&maps[..1]),
            In::from_slice(&maps[1..]),
            Out::from_slice(&mut h),
        );
        let grid = (blocks as u32, rows.div_ceil(128) as u32);
        emu::launch(
            cfg(grid, gemm_wgmma::THREADS, gemm_wgmma::SHARED_BYTES),
            || gemm_wgmma::gemm_wgmma_swiglu(mx, mw, ho, rows as u32, m as u32, k as u32),
        )
        .unwrap();
        let mut want = vec![0.0; rows * m];
        for r in 0..rows {
            for f in 0..m {
                let dot = |w: &[f64]| {
                    (0..k)
                        .map(|i| x_vals[r * k + i] * w[f * k + i])
                        .sum::<f64>()
                };
                let (g, u) = (dot(&gate_vals), dot(&up_vals));
                want[r * m + f] = kiln::reference::ops::silu(g) * u;
            }
        }
        let err = rel_l2(&bf16_f32(&h), &want);
        assert!(
            err < 5e-3,
            "gemm_wgmma_swiglu {rows}×{m}×{k}: rel L2 {err:.3e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Flash attention on the emulator
// ---------------------------------------------------------------------------------------------

/// A causal GQA problem: `n` queries at `start..start + n` over a bf16 KV cache of `cap`
/// positions (a multiple of 128, zero past `start + n`); V stored transposed; head_dim `hd`
/// (64 or 128).
struct Attention {
    hd: usize,
    n: usize,
    start: usize,
    n_head: usize,
    n_kv: usize,
    cap: usize,
    q: Bf16Tensor,
    k: Bf16Tensor,
    vt: Bf16Tensor,
    q_vals: Vec<f64>,
    k_vals: Vec<f64>,
    vt_vals: Vec<f64>,
}

impl Attention {
    fn new(hd: usize, salt: u64, n: usize, start: usize, n_head: usize, n_kv: usize) -> Self {
        #[allow(non_snake_case)]
        let HD = hd;
        let mut r = rng(salt * 1000 + hd as u64);
        let cap = (start + n).next_multiple_of(128);
        let (q, q_vals) = random_bf16(&mut r, n * n_head * HD, 1.0);
        let (mut k, mut k_vals) = random_bf16(&mut r, cap * n_kv * HD, 1.0);
        let (mut vt, mut vt_vals) = random_bf16(&mut r, n_kv * HD * cap, 1.0);
        let len = start + n;
        k[len * n_kv * HD..].fill(0);
        k_vals[len * n_kv * HD..].fill(0.0);
        for row in 0..n_kv * HD {
            vt[row * cap + len..(row + 1) * cap].fill(0);
            vt_vals[row * cap + len..(row + 1) * cap].fill(0.0);
        }
        Attention {
            hd,
            n,
            start,
            n_head,
            n_kv,
            cap,
            q: Bf16Tensor::new(&q),
            k: Bf16Tensor::new(&k),
            vt: Bf16Tensor::new(&vt),
            q_vals,
            k_vals,
            vt_vals,
        }
    }

    /// Runs the kernel for queries `from..from + n` (positions `start + from..`); bf16 out.
    fn run(&self, from: usize, n: usize) -> Vec<u16> {
        let hd = self.hd;
        let width = self.n_head * hd;
        let box_ = |t: &Bf16Tensor, from: usize, cols: usize, rows: usize, box_rows: usize| {
            t.map(
                from,
                cols as u64,
                rows as u64,
                flash_attention::BOX_INNER,
                box_rows as u32,
            )
        };
        let outer = flash_attention::BOX_OUTER as usize;
        // V is read in boxes of 64 keys × one KV head's `hd` rows.
        let maps = [
            box_(&self.q, from * width, width, n, outer),
            box_(&self.k, 0, self.n_kv * hd, self.cap, outer),
            box_(&self.vt, 0, self.cap, self.n_kv * hd, hd),
        ];
        let mut o = vec![0xffffu16; n * width];
        let (mq, mk, mv, oo) = (
            In::from_slice(&maps[..1]),
            In::from_slice(&maps[1..2]),
            In::from_slice(&maps[2..]),
            Out::from_slice(&mut o),
        );
        let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        let (start, heads, kvs) = (
            (self.start + from) as u32,
            self.n_head as u32,
            self.n_kv as u32,
        );
        let grid = (heads, n.div_ceil(flash_attention::BLOCK_Q) as u32);
        emu::launch(
            cfg(
                grid,
                flash_attention::THREADS,
                flash_attention::shared_bytes(hd),
            ),
            || {
                if hd == 64 {
                    flash_attention::flash_attention_hd64(
                        mq, mk, mv, oo, n as u32, start, heads, kvs, scale_log2,
                    )
                } else {
                    flash_attention::flash_attention_hd128(
                        mq, mk, mv, oo, n as u32, start, heads, kvs, scale_log2,
                    )
                }
            },
        )
        .unwrap();
        o
    }

    /// Float64 causal attention: query `i` at `start + i` sees keys `0..=start + i`.
    fn reference(&self) -> Vec<f64> {
        #[allow(non_snake_case)]
        let HD = self.hd;
        let width = self.n_head * HD;
        let group = self.n_head / self.n_kv;
        let keys: Vec<Vec<f64>> = (0..self.n_kv * self.cap)
            .map(|i| {
                let (kv, t) = (i / self.cap, i % self.cap);
                self.k_vals[(t * self.n_kv + kv) * HD..][..HD].to_vec()
            })
            .collect();
        let values: Vec<Vec<f64>> = (0..self.n_kv * self.cap)
            .map(|i| {
                let (kv, t) = (i / self.cap, i % self.cap);
                (0..HD)
                    .map(|d| self.vt_vals[(kv * HD + d) * self.cap + t])
                    .collect()
            })
            .collect();
        let mut out = vec![0.0; self.n * width];
        for i in 0..self.n {
            for h in 0..self.n_head {
                let kv = h / group;
                let q = &self.q_vals[i * width + h * HD..][..HD];
                let o = kiln::reference::ops::attend(
                    q,
                    self.start + i + 1,
                    |t| &keys[kv * self.cap + t],
                    |t| &values[kv * self.cap + t],
                    1.0 / (HD as f64).sqrt(),
                );
                out[i * width + h * HD..][..HD].copy_from_slice(&o);
            }
        }
        out
    }
}

#[test]
fn flash_attention_matches_float64_causal_gqa() {
    for (i, (n, start, n_head, n_kv)) in [
        (1, 0, 4, 2),
        (5, 70, 4, 2),
        (130, 0, 2, 2),
        (130, 70, 4, 2),
        // 3 and 6 key blocks through the 2-slot ring: slots refilled.
        (5, 300, 4, 2),
        (1, 700, 2, 1),
    ]
    .into_iter()
    .enumerate()
    {
        for hd in [128, 64] {
            let a = Attention::new(hd, 80 + i as u64, n, start, n_head, n_kv);
            let got = a.run(0, n);
            let err = rel_l2(&bf16_f32(&got), &a.reference());
            assert!(
                err < 1e-2,
                "flash attention hd{hd} n={n} start={start} heads {n_head}/{n_kv}: rel L2 {err:.3e}"
            );
        }
    }
}

#[test]
fn flash_attention_query_alone_is_bit_identical_to_the_same_query_in_a_batch() {
    for hd in [128, 64] {
        let a = Attention::new(hd, 90, 130, 70, 4, 2);
        let all = a.run(0, 130);
        let width = 4 * hd;
        for i in [0, 57, 127, 128, 129] {
            let alone = a.run(i, 1);
            assert_eq!(
                alone,
                all[i * width..(i + 1) * width],
                "hd{hd}: query {i} computed alone differs from the same query in the 130-query call"
            );
        }
    }
}
