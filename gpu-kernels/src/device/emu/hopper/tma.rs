//! TMA (`cp.async.bulk.tensor.2d…mbarrier::complete_tx::bytes`) and plain bulk copies
//! (`cp.async.bulk…mbarrier::complete_tx::bytes`) from global to shared memory.
//!
//! **Completion model.** A copy lands in shared memory when it is issued, and its bytes are
//! credited (`complete_tx`) at once to its barrier's current phase: the phase that was current
//! when it was issued, as on the GPU, where that phase cannot complete before the announced
//! bytes land. A correct kernel cannot tell the difference. Of the two races an incorrect one
//! can have, this catches one: a producer that refills a slot before its consumers released
//! it overwrites data they have yet to read (the producer runs ahead until it waits), so the
//! results are wrong; a consumer that reads a destination without waiting on its barrier is
//! not caught (the bytes may already be there), as it would not be on the GPU most of the time.
//!
//! A tensor copy writes the whole box, elements outside the tensor as zero
//! (`CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE`), and counts the whole box's bytes, zeros included.
//! Coordinates are signed (`.s32` in PTX): a negative one selects rows or columns before the
//! tensor, which read as zero.
//!
//! A multicast copy (`.multicast::cluster`) is the same copy landing, at once, in each block of
//! its CTA mask, each one's barrier credited with the whole box: the PTX ISA's semantics, and
//! what lets each block wait on its own barrier alone.

use super::{cta_relative, with_hopper_in};
use crate::device::In;
use crate::device::async_copy::{EMULATED_TENSOR_MAP_MAGIC, Swizzle, TensorMap};
use crate::device::emu::block::{Block, ctx};
use crate::device::emu::cluster::peer;
use crate::device::emu::shared::{SharedWindow, shared_window};

#[cfg(not(target_endian = "little"))]
compile_error!("the emulator lays bytes into shared-memory words little-endian, as the GPU does");

const TENSOR_OP: &str = "cp.async.bulk.tensor.2d";
const MULTICAST_OP: &str = "cp.async.bulk.tensor.2d.multicast::cluster";
const BULK_OP: &str = "cp.async.bulk";

/// A decoded, validated emulator tensor map (see `TensorMap::emulated_2d`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Map2d {
    base: u64,
    elem: u64,
    cols: u64,
    rows: u64,
    stride: u64,
    box_cols: u64,
    box_rows: u64,
    swizzle: Swizzle,
}

impl Map2d {
    fn box_bytes(&self) -> u64 {
        self.box_cols * self.box_rows * self.elem
    }
}

/// Reads and checks the map as `cuTensorMapEncodeTiled` checks its arguments, so a map the GPU
/// would refuse is refused here too, and the emulator never reads outside the tensor it names.
pub(super) fn decode(map: In<TensorMap>, op: &str) -> Map2d {
    let w = map.at(0).0;
    if w[0] != EMULATED_TENSOR_MAP_MAGIC {
        panic!(
            "{op}: the tensor map's word 0 is {:#018x}, not EMULATED_TENSOR_MAP_MAGIC: a map \
             encoded for the GPU (cuTensorMapEncodeTiled) reached the emulator; encode it with \
             TensorMap::emulated_2d",
            w[0]
        );
    }
    let bad = |why: String| -> ! { panic!("{op}: invalid tensor map: {why}") };
    let elem = w[6] & 0xff;
    let swizzle = match (w[6] >> 8) as u32 {
        0 => Swizzle::None,
        3 => Swizzle::B128,
        s => bad(format!(
            "swizzle code {s} is not emulated (only None = 0 and B128 = 3)"
        )),
    };
    let m = Map2d {
        base: w[1],
        elem,
        cols: w[2],
        rows: w[3],
        stride: w[4],
        box_cols: w[5] & 0xffff_ffff,
        box_rows: w[5] >> 32,
        swizzle,
    };
    if ![1, 2, 4, 8].contains(&elem) {
        bad(format!("element size {elem} bytes (1, 2, 4 or 8)"));
    }
    if m.cols == 0 || m.rows == 0 || m.cols > 1 << 32 || m.rows > 1 << 32 {
        bad(format!(
            "{} × {} elements (each in 1..=2^32)",
            m.cols, m.rows
        ));
    }
    if !m.base.is_multiple_of(16) {
        bad(format!("base address {:#x} is not 16-byte aligned", m.base));
    }
    if !m.stride.is_multiple_of(16) || m.stride < m.cols * elem || m.stride >= 1 << 40 {
        bad(format!(
            "row stride {} bytes: must be a multiple of 16, below 2^40, and at least the {} \
             bytes of a row ({} elements of {elem} bytes)",
            m.stride,
            m.cols * elem,
            m.cols
        ));
    }
    if !(1..=256).contains(&m.box_cols) || !(1..=256).contains(&m.box_rows) {
        bad(format!(
            "box {} × {} (each dimension in 1..=256)",
            m.box_cols, m.box_rows
        ));
    }
    let inner = m.box_cols * elem;
    if !inner.is_multiple_of(16) {
        bad(format!(
            "box rows of {inner} bytes (must be a multiple of 16)"
        ));
    }
    if swizzle == Swizzle::B128 && inner > 128 {
        bad(format!(
            "box rows of {inner} bytes with the 128-byte swizzle (at most 128)"
        ));
    }
    let extent = w[7];
    let need = (m.rows - 1) * m.stride + m.cols * elem;
    if extent != 0 && need > extent {
        bad(format!(
            "its {} rows of {}-byte stride need {need} bytes from the base, but the buffer it \
             was made over has {extent}",
            m.rows, m.stride
        ));
    }
    m
}

/// `fence.proxy.tensormap::generic.acquire`: nothing to order in the emulator (one memory, no
/// descriptor cache), but the map is checked here, so a GPU map is caught before its first use.
pub fn acquire_tensor_map(map: In<TensorMap>) {
    decode(map, "fence.proxy.tensormap::generic.acquire");
}

/// Checks the destination range in `block` (the running thread's own, or for a multicast a
/// peer in its cluster) and the barrier there (initialised, not overwritten by the copy), and
/// that the write is ordered after every `wgmma` read of those bytes (`race.rs`; only in the
/// issuing thread's own block, see there).
fn check_destination(block: &Block, op: &'static str, dst: u32, bytes: u64, align: u32, bar: u32) {
    if !dst.is_multiple_of(align) {
        panic!("{op}: shared destination {dst:#x} is not {align}-byte aligned");
    }
    if bytes > u32::MAX as u64 || !block.shared.window().contains(dst, bytes as u32) {
        panic!(
            "{op}: {bytes} bytes at shared address {dst:#x} do not fit in the block's shared \
             memory"
        );
    }
    let c = ctx();
    let own = std::ptr::eq(block, c.block());
    with_hopper_in(block, |h| {
        let (agent, phase) = h.bars.check_copy(bar, dst, bytes as u32, op);
        let threads = c.block_dim.count() as usize;
        h.races.write(
            threads,
            own.then_some(c.rank as usize),
            op,
            dst,
            bytes as u32,
            bar,
            agent,
            phase,
        );
    });
}

/// Credits `bytes` to the current phase of `block`'s barrier at `bar`.
fn complete_tx(block: &Block, bar: u32, bytes: u32, op: &str) {
    with_hopper_in(block, |h| h.bars.complete_tx(bar, bytes, op));
}

/// `u32` words viewed as bytes (for copying raw bytes into them).
fn as_bytes(words: &mut [u32]) -> &mut [u8] {
    // SAFETY: a `u32` slice is a valid, aligned byte slice four times as long.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 4) }
}

/// `cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [dst],
/// [map, {x, y}], [bar]`: the box at column `x`, row `y` (signed) into shared memory at `dst`.
pub fn tma_load_2d(dst: u32, map: In<TensorMap>, x: u32, y: u32, bar: u32) {
    cta_relative(dst, TENSOR_OP);
    cta_relative(bar, TENSOR_OP);
    let m = decode(map, TENSOR_OP);
    let block = ctx().block();
    check_destination(block, TENSOR_OP, dst, m.box_bytes(), BOX_ALIGN, bar);
    land(block.shared.window(), dst, &read_box(&m, x, y), m.swizzle);
    complete_tx(block, bar, m.box_bytes() as u32, TENSOR_OP);
}

/// `cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes
/// .multicast::cluster [dst], [map, {x, y}], [bar], cta_mask`: the box, read once, lands at
/// offset `dst` of every block of the cluster whose rank is set in `cta_mask`, and each one's
/// barrier at offset `bar` is credited with the box's bytes.
pub fn tma_load_2d_multicast(
    dst: u32,
    map: In<TensorMap>,
    x: u32,
    y: u32,
    bar: u32,
    cta_mask: u16,
) {
    cta_relative(dst, MULTICAST_OP);
    cta_relative(bar, MULTICAST_OP);
    let size = ctx().block().cluster.size;
    if cta_mask == 0 {
        panic!("{MULTICAST_OP}: the CTA mask is empty (no block would receive the box)");
    }
    if u32::from(cta_mask) >> size != 0 {
        panic!(
            "{MULTICAST_OP}: the CTA mask {cta_mask:#b} names block ranks beyond the cluster of \
             {size} block(s)"
        );
    }
    let m = decode(map, MULTICAST_OP);
    let (bytes, align) = (m.box_bytes(), BOX_ALIGN);
    let packed = read_box(&m, x, y);
    for rank in (0..size).filter(|r| cta_mask >> r & 1 == 1) {
        let block = peer(rank, MULTICAST_OP);
        if block.live.get() == 0 {
            panic!(
                "{MULTICAST_OP}: block rank {rank} of the CTA mask {cta_mask:#b} has exited: its \
                 shared memory is gone (cluster_sync before a block exits)"
            );
        }
        check_destination(block, MULTICAST_OP, dst, bytes, align, bar);
        land(block.shared.window(), dst, &packed, m.swizzle);
        complete_tx(block, bar, bytes as u32, MULTICAST_OP);
    }
}

/// The CUDA programming guide's TMA alignment table: shared destinations 128-byte aligned,
/// with or without a swizzle. The 128-byte swizzle is a function of the shared address bits
/// (it repeats every 1024 bytes), so a box may start mid-period: one-row boxes placed at
/// `tile + 128·r` build the same tile as one box of all its rows (`probe_tma_rows`; the H200
/// agrees).
const BOX_ALIGN: u32 = 128;

/// The box at column `x`, row `y` (signed) of `m`, packed row after row, zeros outside.
fn read_box(m: &Map2d, x: u32, y: u32) -> Vec<u32> {
    let mut packed = vec![0u32; (m.box_bytes() / 4) as usize];
    let row_bytes = (m.box_cols * m.elem) as usize;
    let (x, y) = (x as i32 as i64, y as i32 as i64);
    let raw = as_bytes(&mut packed);
    for r in 0..m.box_rows as i64 {
        let gy = y + r;
        if gy < 0 || gy >= m.rows as i64 {
            continue;
        }
        // Box columns whose tensor column `x + c` lies in 0..cols.
        let c0 = (-x).clamp(0, m.box_cols as i64);
        let c1 = (m.cols as i64 - x).clamp(c0, m.box_cols as i64);
        if c0 == c1 {
            continue;
        }
        let src = m.base + gy as u64 * m.stride + (x + c0) as u64 * m.elem;
        let len = ((c1 - c0) as u64 * m.elem) as usize;
        let at = r as usize * row_bytes + (c0 as u64 * m.elem) as usize;
        // SAFETY: row `gy` < rows and columns `x + c0 .. x + c1` ≤ cols lie inside the tensor
        // the map describes, which `decode` checked against the buffer's extent when the map
        // carries it; otherwise the map's maker vouches for the tensor, as on the GPU.
        unsafe {
            std::ptr::copy_nonoverlapping(src as *const u8, raw[at..at + len].as_mut_ptr(), len)
        };
    }
    packed
}

/// Writes the packed box into `shared` at `dst` as the swizzle lays it out: with the 128-byte
/// swizzle, the 16-byte chunk bound for address `a` lands at `a ^ ((a >> 7) & 7) << 4`.
fn land(shared: SharedWindow, dst: u32, packed: &[u32], swizzle: Swizzle) {
    match swizzle {
        Swizzle::None => shared.write(dst, packed),
        Swizzle::B128 => {
            for (chunk, words) in packed.chunks_exact(4).enumerate() {
                let a = dst + 16 * chunk as u32;
                shared.write(a ^ (((a >> 7) & 7) << 4), words);
            }
        }
    }
}

/// `cp.async.cg.shared.global [dst], [src + index elements], 16, valid ? 16 : 0`: 16 bytes
/// (zeros when `!valid`, `src` then unread) to shared `dst`, at once.
pub fn cp_async_16<T: Copy>(dst: u32, src: In<T>, index: usize, valid: bool) {
    const OP: &str = "cp.async.cg.shared.global";
    if !dst.is_multiple_of(16) || !shared_window().contains(dst, 16) {
        panic!(
            "{OP}: 16 bytes at shared address {dst:#x}: not 16-byte aligned, or outside the block's shared memory"
        );
    }
    let mut words = [0u32; 4];
    if valid {
        let offset = index * core::mem::size_of::<T>();
        let addr = src.address() + offset as u64;
        if !addr.is_multiple_of(16) || offset + 16 > src.byte_len() {
            panic!(
                "{OP}: bytes {offset}..{} of a global buffer of {} bytes at {:#x} (16-byte aligned and inside, please)",
                offset + 16,
                src.byte_len(),
                src.address()
            );
        }
        // SAFETY: the 16 bytes lie inside the buffer `src` views (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(addr as *const u8, as_bytes(&mut words).as_mut_ptr(), 16)
        };
    }
    shared_window().write(dst, &words);
}

/// `cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src], bytes,
/// [bar]`: `bytes` (a multiple of 16) from `src` (16-byte aligned) to `dst` (16-byte aligned).
pub fn bulk_load<T: Copy>(dst: u32, src: In<T>, bytes: u32, bar: u32) {
    if !bytes.is_multiple_of(16) {
        panic!("{BULK_OP}: size {bytes} bytes is not a multiple of 16");
    }
    if !src.address().is_multiple_of(16) {
        panic!(
            "{BULK_OP}: global source {:#x} is not 16-byte aligned",
            src.address()
        );
    }
    if bytes as usize > src.byte_len() {
        panic!(
            "{BULK_OP}: copies {bytes} bytes from a global buffer of {} bytes",
            src.byte_len()
        );
    }
    cta_relative(dst, BULK_OP);
    cta_relative(bar, BULK_OP);
    let block = ctx().block();
    check_destination(block, BULK_OP, dst, bytes as u64, 16, bar);
    let mut words = vec![0u32; bytes as usize / 4];
    // SAFETY: `bytes` ≤ the length of the buffer `src` views (checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(
            src.address() as *const u8,
            as_bytes(&mut words).as_mut_ptr(),
            bytes as usize,
        )
    };
    block.shared.window().write(dst, &words);
    complete_tx(block, bar, bytes, BULK_OP);
}
