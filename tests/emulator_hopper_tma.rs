//! The emulator's Hopper model (`gpu_kernels::device::emu::hopper`), TMA and bulk copies: the
//! box a TMA load lands against the layout written out independently here from the CUDA
//! description (the 128-byte swizzle, packed rows, zeros outside the tensor, signed
//! coordinates, one-row boxes gathered into a tile); misuse (a map encoded for the GPU, a misaligned or too small destination, a
//! copy over its own barrier, invalid maps), with the emulator's exact messages; and
//! `cp.async.bulk`, which copies bytes and checks its operands.
//!
//! Everything launches at the emulator level (`emu::launch`), with tensor maps encoded by
//! `TensorMap::emulated_2d` over host vectors (`emu_common::hopper`).
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod common;
mod emu_common;

use common::rng;
use emu_common::expect_err;
use emu_common::hopper::{Aligned, Bf16Tensor, cfg, expected_box, random_bf16};
use gpu_kernels::device::async_copy::{Mbarrier, Swizzle, TensorMap, tma_load_2d};
use gpu_kernels::device::emu;
use gpu_kernels::device::{In, Out, sync_threads, thread_idx};
use gpu_kernels::probe;

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
        let swizzle = if swizzled {
            Swizzle::B128
        } else {
            Swizzle::None
        };
        let maps = [t.map_swizzled(0, (cols as u64, rows as u64), (bc, br), swizzle)];
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

/// One-row boxes landing at lines `128·r` of a tile (the grouped gate|up's row gather) make
/// the tile one box of the same rows would: the 128-byte swizzle follows the shared address.
/// Rows repeat and come in any order.
#[test]
fn one_row_boxes_build_the_swizzled_tile_of_their_rows() {
    let mut r = rng(2);
    let (cols, rows) = (64usize, 40usize);
    let (bits, _) = random_bf16(&mut r, cols * rows, 1.0);
    let t = Bf16Tensor::new(&bits);
    let maps = [t.map(0, cols as u64, rows as u64, 64, 1)];
    for n in [1usize, 13, 32, 128] {
        let picks: Vec<u32> = (0..n)
            .map(|_| (r.next_u64() % rows as u64) as u32)
            .collect();
        let mut out = vec![u32::MAX; n * 32];
        let (m, p, o) = (
            In::from_slice(&maps),
            In::from_slice(&picks),
            Out::from_slice(&mut out),
        );
        emu::launch(cfg((1, 1), 128, probe::PROBE_SHARED_BYTES), || {
            probe::probe_tma_rows(m, p, o, n as u32)
        })
        .unwrap();
        let gathered: Vec<u16> = picks
            .iter()
            .flat_map(|&y| bits[y as usize * cols..][..cols].iter().copied())
            .collect();
        let want = expected_box(&gathered, cols, n, 0, 0, cols, n, true);
        assert_eq!(out, want, "{n} gathered rows");
    }
}

/// `cp.async`: 16-byte chunks from random words land where they belong in shared memory, in
/// several commit groups per thread; chunks past `valid` are zero fills (the poison in `out`
/// and any read of the source past `valid` would show).
#[test]
fn cp_async_chunks_land_and_invalid_chunks_are_zero() {
    let mut r = rng(3);
    for (threads, bytes, valid) in [(32, 4096u32, 4096u32), (64, 16384, 9008), (96, 1040, 0)] {
        let src: Vec<u32> = (0..valid / 4).map(|_| r.next_u64() as u32 | 1).collect();
        // The source holds only the valid words: reading a zero-filled chunk's source would
        // be out of bounds, which the emulator reports.
        let src_in = if src.is_empty() {
            vec![7u32; 4]
        } else {
            src.clone()
        };
        let mut out = vec![u32::MAX; bytes as usize / 4];
        let (s, o) = (In::from_slice(&src_in), Out::from_slice(&mut out));
        emu::launch(cfg((1, 1), threads, probe::PROBE_SHARED_BYTES), || {
            probe::probe_cp_async(s, o, bytes, valid)
        })
        .unwrap();
        let mut want = src.clone();
        want.resize(bytes as usize / 4, 0);
        assert_eq!(out, want, "{threads} threads, {bytes} bytes, {valid} valid");
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
    // Shared destinations are 128-byte aligned (with or without a swizzle).
    assert_eq!(
        run(good, 64, 16384, 16392),
        format!("{prefix}shared destination 0x40 is not 128-byte aligned")
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
