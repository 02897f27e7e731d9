//! What the tests of the emulator's Hopper model share: the launch shape they use, 16-byte
//! aligned host tensors with their emulated tensor maps, and random bf16 operands.

use gpu_kernels::device::Dim3;
use gpu_kernels::device::async_copy::{Swizzle, TensorMap};
use gpu_kernels::device::emu::LaunchConfig;
use half::bf16;
use kiln::rng::Rng;

/// A `grid.0 × grid.1` grid of 1-D blocks of `threads` threads.
pub fn cfg(grid: (u32, u32), threads: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: Dim3::new(grid.0, grid.1, 1),
        block: Dim3::new(threads, 1, 1),
        dynamic_shared_bytes: shared_bytes,
    }
}

/// 16-byte aligned storage (TMA and bulk sources must be 16-byte aligned; a `Vec<u16>` or
/// `Vec<u32>` is only promised its element's alignment).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u8; 16]);

/// A copy of a `[T]` at a 16-byte aligned address.
pub struct Aligned<T> {
    chunks: Vec<Chunk>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

/// A row-major bf16 tensor (bits) for TMA.
pub type Bf16Tensor = Aligned<u16>;

impl<T: Copy> Aligned<T> {
    pub fn new(v: &[T]) -> Self {
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
    pub fn get(&self) -> &[T] {
        // SAFETY: the first `len` elements were copied in from a `[T]`; 16-byte alignment
        // covers `T`'s.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast(), self.len) }
    }
}

impl Aligned<u16> {
    pub fn bits(&self) -> &[u16] {
        self.get()
    }
    /// The map of the `[rows][cols]` tensor starting at element `from` (row-major, dense),
    /// 128B-swizzled as kiln's kernels read it.
    pub fn map(
        &self,
        from: usize,
        cols: u64,
        rows: u64,
        box_cols: u32,
        box_rows: u32,
    ) -> TensorMap {
        self.map_swizzled(from, (cols, rows), (box_cols, box_rows), Swizzle::B128)
    }

    /// [`Aligned::map`] with the given swizzle (`Swizzle::None`: packed box rows).
    pub fn map_swizzled(
        &self,
        from: usize,
        (cols, rows): (u64, u64),
        (box_cols, box_rows): (u32, u32),
        swizzle: Swizzle,
    ) -> TensorMap {
        let s = &self.bits()[from..];
        TensorMap::emulated_2d(
            s.as_ptr() as u64,
            2,
            cols,
            rows,
            2 * cols,
            box_cols,
            box_rows,
            swizzle,
        )
        .with_extent(2 * s.len() as u64)
    }
}

/// `n` random bf16 (N(0, std²) rounded): the bits and their exact values.
pub fn random_bf16(r: &mut Rng, n: usize, std: f64) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| bf16::from_f64(r.normal() * std).to_bits())
        .collect();
    let vals = bits.iter().map(|b| bf16::from_bits(*b).to_f64()).collect();
    (bits, vals)
}

/// The box at (`x`, `y`) (signed) of the `[rows][cols]` bf16 tensor `t`, as TMA lays it out in
/// shared memory, written from the CUDA description rather than the emulator's code: box row
/// `r` takes 128 bytes, and with the 128-byte swizzle its 16-byte chunk `c` (elements
/// `8c..8c + 8` of the row) is stored as chunk `c ^ (r % 8)`; without a swizzle rows are
/// packed. Outside the tensor: zeros.
#[allow(clippy::too_many_arguments)]
pub fn expected_box(
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

/// What `probe_cluster_ring` computes, from its description: per block `blk` and thread `t`, a
/// fold over the `k_tiles` steps of the words of that step's A tile (`blk · k_tiles + i`, 256
/// words) and of the B tile both blocks share (step `i`, 512 words in two halves).
/// `a_word(tile, w)` and `b_word(step, w)` read word `w` as the caller's tiles lay it out
/// (packed on the emulator's own maps, 128B-swizzled on the kernels' maps).
pub fn ring_reference(
    a_word: impl Fn(usize, usize) -> u32,
    b_word: impl Fn(usize, usize) -> u32,
    blocks: usize,
    k_tiles: usize,
) -> Vec<u32> {
    let mut out = vec![0u32; blocks * 128];
    for blk in 0..blocks {
        for t in 0..128 {
            let mut acc = 0u32;
            for i in 0..k_tiles {
                let at = |w: usize| a_word(blk * k_tiles + i, w);
                let bt = |w: usize| b_word(i, w);
                let lo = at(t).wrapping_mul(bt(t).wrapping_add(3u32.wrapping_mul(bt(t + 256))));
                let hi = at(t + 128)
                    .wrapping_mul(bt(t + 128).wrapping_add(5u32.wrapping_mul(bt(t + 384))));
                acc = acc.wrapping_mul(31).wrapping_add(lo).wrapping_add(hi);
            }
            out[blk * 128 + t] = acc;
        }
    }
    out
}
