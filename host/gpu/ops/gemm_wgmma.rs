//! Hopper GEMM launch wrappers (kernels: gpu-kernels/src/gemm_wgmma.rs): `wgmma` tensor cores
//! fed by TMA, bf16 activations and weights ([`TmaMatrix`]), f32 accumulation. Weights are
//! `[m][k]` (GGUF order).

use super::gemm::Epilogue;
use super::{GemmPairs, to_u32};
use crate::gpu::{
    Buffer, Device, Element, GpuError, LaunchConfig, Result, TmaMatrix, ensure_shape,
};
use gpu_kernels::gemm_wgmma::{
    self, BK, BM, BN, EPI_ADD_TO_Y, EPI_BIAS, HALF_BN, SHARED_BYTES, THREADS, WIDE_BN,
    WIDE_SHARED_BYTES,
};

/// Output features per gate (or up) block of an interleaved gate|up weight matrix.
pub const GATE_UP_BLOCK: usize = BN / 2;

/// Output columns per block of the dense GEMMs: `BN` (narrow) or `WIDE_BN` (wide, which reads
/// each A tile half as often), the wide ones optionally in cluster pairs. All give every
/// element the same bits (the same `wgmma` sequence), so the tiling may change from call to
/// call without breaking batch invariance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileWidth {
    /// Wide when that still makes [`WIDE_MIN_TILES`] wide tiles, else narrow; wide tiles run
    /// paired from [`PAIRED_MIN_TILES`] on (`KILN_GEMM_PAIRS`: [`super::gemm_pairs`]).
    Auto,
    Narrow,
    Wide,
    /// Wide, in clusters of two blocks on two row tiles of one column block that share each B
    /// tile (each block loads half of it into both by multicast TMA, so it is read from L2
    /// once per pair).
    WidePaired,
}

/// Wide tiles a launch needs for `TileWidth::Auto` to choose them. Measured on the H200 (132
/// multiprocessors, 2026-11-29, same call, one block per tile then): wide tiles won at 80
/// tiles (512 × 5120 × 2048: 255 vs 239 TFLOP/s) and above (4096 × 2048 × 4096, 256 tiles:
/// 558 vs 495; 8192³: 592 vs 540) and lost at 64 (4096 × 512 × 2048: 218 vs 283), where half
/// the multiprocessors idle. Rechecked with persistent launches and the faster epilogue
/// (session 4): 291 vs 277 at 80 tiles, 237 vs 339 at 64.
pub const WIDE_MIN_TILES: usize = 72;

/// Wide tiles a launch needs for `TileWidth::Auto` to pair them (two waves on the H200's 132
/// multiprocessors). Measured on the H200 (session 10, lab/gemm.py, interleaved rounds of
/// ~100 ms, TFLOP/s paired vs unpaired; calls C and E): 8192³ (2048 tiles) 623 vs 597 and
/// 647 vs 616; 4096 × 5120 × 2048 (640) 601 vs 592 and 564 vs 546; 4096 × 4096 × 2048 (512)
/// 600 vs 594 and 559 vs 553; but 4096 × 2048 × 4096 (256) 638 vs 641 and 595 vs 597, and
/// 512 × 5120 × 2048 (80) 225 vs 228 and 281 vs 291. Pairs read B from L2 once per two tiles
/// and walk the tiles in bands (less DRAM traffic, so less power, so a higher clock); a short
/// launch has too few waves for that to pay for the pair's lockstep.
pub const PAIRED_MIN_TILES: usize = 264;

impl TileWidth {
    /// What the tiling is for a call over `rows` rows and `n_cols` B rows: never `Auto`.
    fn resolve(self, rows: usize, n_cols: usize) -> TileWidth {
        self.resolve_with(rows, n_cols, super::gemm_pairs())
    }

    /// [`TileWidth::resolve`] with `KILN_GEMM_PAIRS`' answer given (`pairs`).
    fn resolve_with(self, rows: usize, n_cols: usize, pairs: GemmPairs) -> TileWidth {
        let wide_tiles = rows.div_ceil(BM) * n_cols.div_ceil(WIDE_BN);
        let paired = match pairs {
            GemmPairs::Never => false,
            GemmPairs::Always => true,
            GemmPairs::Large => wide_tiles >= PAIRED_MIN_TILES,
        };
        match self {
            TileWidth::Auto if wide_tiles < WIDE_MIN_TILES => TileWidth::Narrow,
            TileWidth::Auto if paired => TileWidth::WidePaired,
            TileWidth::Auto => TileWidth::Wide,
            chosen => chosen,
        }
    }
}

/// One persistent launch over `rows` rows of `x` and `n_cols` B rows in tiles of `width` (not
/// `Auto`): a block per multiprocessor, at most one per tile; paired, a cluster per pair of
/// row tiles, as many as fit at once (asked of `paired`, the entry that declares the cluster).
fn config(
    dev: &Device,
    (kernel, paired): (&'static str, &'static str),
    rows: usize,
    n_cols: usize,
    width: TileWidth,
) -> Result<LaunchConfig> {
    let wide_tiles = |row_tiles: usize| row_tiles * n_cols.div_ceil(WIDE_BN);
    match width {
        TileWidth::Narrow => {
            let tiles = rows.div_ceil(BM) * n_cols.div_ceil(BN);
            super::persistent(dev, kernel, tiles, THREADS, SHARED_BYTES)
        }
        TileWidth::WidePaired => {
            // Row tiles in pairs: an odd count leaves the last pair's second tile empty.
            let tiles = wide_tiles(2 * rows.div_ceil(2 * BM));
            super::persistent_pairs(dev, paired, tiles, THREADS, WIDE_SHARED_BYTES)
        }
        TileWidth::Wide | TileWidth::Auto => {
            let tiles = wide_tiles(rows.div_ceil(BM));
            super::persistent(dev, kernel, tiles, THREADS, WIDE_SHARED_BYTES)
        }
    }
}

/// `y[rows][m] = x[rows][k] · w[m][k]ᵀ (+ bias) (+ y)`, f32 out; `m`, `k` from `w`.
pub fn matmul(
    dev: &Device,
    x: &TmaMatrix,
    w: &TmaMatrix,
    y: &Buffer<f32>,
    rows: usize,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    matmul_tiled(dev, x, w, y, (rows, TileWidth::Auto), epilogue)
}

/// [`matmul`] with the tile width chosen by the caller (tests and benchmarks).
pub fn matmul_tiled(
    dev: &Device,
    x: &TmaMatrix,
    w: &TmaMatrix,
    y: &Buffer<f32>,
    (rows, width): (usize, TileWidth),
    epilogue: Epilogue<'_>,
) -> Result<()> {
    const K: &str = "gemm_wgmma_f32";
    let names = (K, gemm_wgmma::gemm_wgmma_f32_wide_pair::ENTRY.name);
    let Some((cfg, width, flags)) = dense_setup(dev, names, (x, w), y, (rows, width), epilogue)?
    else {
        return Ok(());
    };
    let bias = Buffer::maybe_input(epilogue.bias);
    let (rows, m, k) = (rows as u32, w.rows() as u32, w.cols() as u32);
    let (x, w, out) = (x.map(), w.map(), y.output());
    match width {
        TileWidth::Narrow => {
            gemm_wgmma::gemm_wgmma_f32::launch(dev, cfg, x, w, bias, out, rows, m, k, flags)
        }
        TileWidth::Wide | TileWidth::Auto => {
            gemm_wgmma::gemm_wgmma_f32_wide::launch(dev, cfg, x, w, bias, out, rows, m, k, flags)
        }
        TileWidth::WidePaired => gemm_wgmma::gemm_wgmma_f32_wide_pair::launch(
            dev, cfg, x, w, bias, out, rows, m, k, flags,
        ),
    }
}

/// Tiles of the K-segmented GEMM: narrow (`BN` columns), or half width (`HALF_BN`) for calls
/// of few tiles. Both give every element the same bits (the same `wgmma` k16 steps), so the
/// choice may change from call to call without breaking batch invariance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentTiles {
    /// Half width when narrow tiles would leave multiprocessors idle.
    Auto,
    Narrow,
    Half,
}

/// K-segmented `x · wᵀ`: `y` is `[⌈k / seg_k⌉][rows][m]` f32, plane `s` the products over K
/// columns `s·seg_k..(s+1)·seg_k` alone, for the caller to add in a fixed order (split-K whose
/// split is a function of `k` and `seg_k`, never of `rows`: batch-invariant). `seg_k` a
/// positive multiple of `BK` (64). `w` needs maps in boxes of `BN` and of `HALF_BN` rows (its
/// own and [`TmaMatrix::with_second_box`]), for either tiling.
pub fn matmul_segments(
    dev: &Device,
    x: &TmaMatrix,
    w: &TmaMatrix,
    y: &Buffer<f32>,
    rows: usize,
    seg_k: usize,
) -> Result<()> {
    matmul_segments_tiled(dev, x, w, y, (rows, SegmentTiles::Auto), seg_k)
}

/// [`matmul_segments`] with the tiling chosen by the caller (tests); `w` needs only the map
/// of that tiling's boxes.
pub fn matmul_segments_tiled(
    dev: &Device,
    x: &TmaMatrix,
    w: &TmaMatrix,
    y: &Buffer<f32>,
    (rows, tiling): (usize, SegmentTiles),
    seg_k: usize,
) -> Result<()> {
    const K: &str = "gemm_wgmma_f32_segments";
    let (m, k) = (w.rows(), w.cols());
    ensure_shape!(
        seg_k > 0 && seg_k.is_multiple_of(BK),
        K,
        "segment width {seg_k} must be a positive multiple of {BK}"
    );
    let segments = k.div_ceil(seg_k);
    x.check(K, "x", rows, k)?;
    super::check_len(K, "y", y, segments * rows * m)?;
    to_u32(K, "segments × rows × m", segments * rows * m)?;
    let tiles = |cols: usize| rows.div_ceil(BM) * m.div_ceil(cols) * segments;
    // Measured on the H200 at the router's 30b shape (ncu, session 10): half width 9.3 vs
    // 10.6 µs at 512 tokens (24 narrow tiles), 21.8 vs 19.4 at 4096 (192).
    let half = match tiling {
        SegmentTiles::Auto => tiles(BN) < dev.multiprocessors() as usize,
        SegmentTiles::Narrow => false,
        SegmentTiles::Half => true,
    };
    let (cols, box_rows) = if half { (HALF_BN, HALF_BN) } else { (BN, BN) };
    let Some(map_w) = w.map_boxed(box_rows as u32) else {
        return Err(GpuError::Shape {
            kernel: K,
            message: format!(
                "w has no map in boxes of {box_rows} rows (its own has {})",
                w.box_rows()
            ),
        });
    };
    if rows == 0 {
        return Ok(());
    }
    let cfg = super::persistent(dev, K, tiles(cols), THREADS, SHARED_BYTES)?;
    let (rows, m, k, seg_k) = (rows as u32, m as u32, k as u32, seg_k as u32);
    let (x, y) = (x.map(), y.output());
    if half {
        gemm_wgmma::gemm_wgmma_f32_segments_half::launch(dev, cfg, x, map_w, y, rows, m, k, seg_k)
    } else {
        gemm_wgmma::gemm_wgmma_f32_segments::launch(dev, cfg, x, map_w, y, rows, m, k, seg_k)
    }
}

/// `y[rows][m] = bf16(x[rows][k] · w[m][k]ᵀ (+ bias))`: each element one rounding of its f32
/// sum, bias included (the Q|K|V projection, which `attention_input` reads once); the same
/// sums, so the same bits as `bf16(`[`matmul`]`)`. No `+ y` (the residual stream is f32).
pub fn matmul_bf16(
    dev: &Device,
    x: &TmaMatrix,
    w: &TmaMatrix,
    y: &Buffer<u16>,
    rows: usize,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    matmul_bf16_tiled(dev, x, w, y, (rows, TileWidth::Auto), epilogue)
}

/// [`matmul_bf16`] with the tile width chosen by the caller (tests and benchmarks).
pub fn matmul_bf16_tiled(
    dev: &Device,
    x: &TmaMatrix,
    w: &TmaMatrix,
    y: &Buffer<u16>,
    (rows, width): (usize, TileWidth),
    epilogue: Epilogue<'_>,
) -> Result<()> {
    const K: &str = "gemm_wgmma_bf16";
    ensure_shape!(!epilogue.add_to_y, K, "a bf16 output cannot be added to");
    let names = (K, gemm_wgmma::gemm_wgmma_bf16_wide_pair::ENTRY.name);
    let Some((cfg, width, flags)) = dense_setup(dev, names, (x, w), y, (rows, width), epilogue)?
    else {
        return Ok(());
    };
    let bias = Buffer::maybe_input(epilogue.bias);
    let (rows, m, k) = (rows as u32, w.rows() as u32, w.cols() as u32);
    let (x, w, out) = (x.map(), w.map(), y.output());
    match width {
        TileWidth::Narrow => {
            gemm_wgmma::gemm_wgmma_bf16::launch(dev, cfg, x, w, bias, out, rows, m, k, flags)
        }
        TileWidth::Wide | TileWidth::Auto => {
            gemm_wgmma::gemm_wgmma_bf16_wide::launch(dev, cfg, x, w, bias, out, rows, m, k, flags)
        }
        TileWidth::WidePaired => gemm_wgmma::gemm_wgmma_bf16_wide_pair::launch(
            dev, cfg, x, w, bias, out, rows, m, k, flags,
        ),
    }
}

/// The checks and launch choices both dense wrappers share: `None` when there are no rows,
/// else the launch, its tiling (not `Auto`), and the epilogue flags.
fn dense_setup<T: Element>(
    dev: &Device,
    (kernel, paired): (&'static str, &'static str),
    (x, w): (&TmaMatrix, &TmaMatrix),
    y: &Buffer<T>,
    (rows, width): (usize, TileWidth),
    epilogue: Epilogue<'_>,
) -> Result<Option<(LaunchConfig, TileWidth, u32)>> {
    let (m, k) = (w.rows(), w.cols());
    x.check(kernel, "x", rows, k)?;
    check_dense_boxes(kernel, x, w)?;
    super::check_len(kernel, "y", y, rows * m)?;
    if let Some(b) = epilogue.bias {
        super::check_len(kernel, "bias", b, m)?;
    }
    to_u32(kernel, "rows × m", rows * m)?;
    if rows == 0 {
        return Ok(None);
    }
    let width = width.resolve(rows, m);
    let cfg = config(dev, (kernel, paired), rows, m, width)?;
    let flags = if epilogue.bias.is_some() { EPI_BIAS } else { 0 }
        | if epilogue.add_to_y { EPI_ADD_TO_Y } else { 0 };
    Ok(Some((cfg, width, flags)))
}

/// `h[rows][m] = bf16(silu(x · w_gateᵀ) ⊙ (x · w_upᵀ))` with `w_gate_up` interleaved by
/// [`interleave_gate_up`] (`2·⌈m/64⌉·64` rows); `h` is `[≥ rows][m]`.
pub fn matmul_swiglu(
    dev: &Device,
    x: &TmaMatrix,
    w_gate_up: &TmaMatrix,
    h: &TmaMatrix,
    rows: usize,
) -> Result<()> {
    matmul_swiglu_tiled(dev, x, w_gate_up, h, (rows, TileWidth::Auto))
}

/// [`matmul_swiglu`] with the tile width chosen by the caller (tests and benchmarks).
pub fn matmul_swiglu_tiled(
    dev: &Device,
    x: &TmaMatrix,
    w_gate_up: &TmaMatrix,
    h: &TmaMatrix,
    (rows, width): (usize, TileWidth),
) -> Result<()> {
    const K: &str = "gemm_wgmma_swiglu";
    let (m, k) = (h.cols(), w_gate_up.cols());
    x.check(K, "x", rows, k)?;
    h.check(K, "h", rows, m)?;
    w_gate_up.check(K, "w_gate_up", interleaved_rows(m), k)?;
    check_dense_boxes(K, x, w_gate_up)?;
    to_u32(K, "rows × m", rows * m)?;
    if rows == 0 {
        return Ok(());
    }
    let width = width.resolve(rows, interleaved_rows(m));
    let paired = gemm_wgmma::gemm_wgmma_swiglu_wide_pair::ENTRY.name;
    let cfg = config(dev, (K, paired), rows, interleaved_rows(m), width)?;
    let (x, w, h) = (x.map(), w_gate_up.map(), h.data().output());
    let (rows, m, k) = (rows as u32, m as u32, k as u32);
    match width {
        TileWidth::Narrow => gemm_wgmma::gemm_wgmma_swiglu::launch(dev, cfg, x, w, h, rows, m, k),
        TileWidth::Wide | TileWidth::Auto => {
            gemm_wgmma::gemm_wgmma_swiglu_wide::launch(dev, cfg, x, w, h, rows, m, k)
        }
        TileWidth::WidePaired => {
            gemm_wgmma::gemm_wgmma_swiglu_wide_pair::launch(dev, cfg, x, w, h, rows, m, k)
        }
    }
}

/// The dense GEMMs read A in boxes of `BM` rows (one per tile) and B in boxes of `BN` rows
/// (one or two per tile; paired, one per block): a map with other boxes would bring a
/// different number of bytes than the kernel waits for (a hang, not an error), e.g. a weight
/// map made for the K-segmented GEMM's narrow tiles.
fn check_dense_boxes(kernel: &'static str, x: &TmaMatrix, w: &TmaMatrix) -> Result<()> {
    for (name, map, want) in [("x", x, BM), ("w", w, BN)] {
        ensure_shape!(
            map.box_rows() == want as u32,
            kernel,
            "{name} is read in boxes of {} rows; the dense GEMMs need {want}",
            map.box_rows()
        );
    }
    Ok(())
}

/// Rows of an interleaved gate|up matrix for `m` output features.
pub fn interleaved_rows(m: usize) -> usize {
    2 * m.div_ceil(GATE_UP_BLOCK) * GATE_UP_BLOCK
}

/// Gate and up weights (`[m][k]` each) as one matrix the SwiGLU GEMM reads: blocks of 64 gate
/// rows, each followed by the 64 matching up rows; past `m`, zero rows (their outputs are
/// silu(0)·0 = 0 and never stored).
pub fn interleave_gate_up(gate: &[u16], up: &[u16], m: usize, k: usize) -> Vec<u16> {
    assert_eq!(gate.len(), m * k, "gate is not m × k");
    assert_eq!(up.len(), m * k, "up is not m × k");
    let mut out = vec![0u16; interleaved_rows(m) * k];
    for (b, block) in out.chunks_mut(2 * GATE_UP_BLOCK * k).enumerate() {
        let (g, u) = block.split_at_mut(GATE_UP_BLOCK * k);
        for r in 0..GATE_UP_BLOCK {
            let src = b * GATE_UP_BLOCK + r;
            if src < m {
                g[r * k..(r + 1) * k].copy_from_slice(&gate[src * k..(src + 1) * k]);
                u[r * k..(r + 1) * k].copy_from_slice(&up[src * k..(src + 1) * k]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Auto` pairs wide tiles from `PAIRED_MIN_TILES` on by default, never with
    /// `KILN_GEMM_PAIRS=0`, always with `=1`, and never pairs narrow tiles; explicit tilings
    /// stay what they are.
    #[test]
    fn auto_pairs_large_wide_launches() {
        // 512 / 80 / 256 / 512 wide tiles.
        let (small, wide80, wide256, big) = ((512, 512), (512, 5120), (4096, 2048), (4096, 4096));
        let auto = |(rows, cols), pairs| TileWidth::Auto.resolve_with(rows, cols, pairs);
        for pairs in [GemmPairs::Large, GemmPairs::Never, GemmPairs::Always] {
            assert_eq!(auto(small, pairs), TileWidth::Narrow);
            for chosen in [TileWidth::Narrow, TileWidth::Wide, TileWidth::WidePaired] {
                assert_eq!(chosen.resolve_with(big.0, big.1, pairs), chosen);
                assert_eq!(chosen.resolve_with(small.0, small.1, pairs), chosen);
            }
        }
        let (w, p) = (TileWidth::Wide, TileWidth::WidePaired);
        assert_eq!(auto(wide80, GemmPairs::Large), w);
        assert_eq!(auto(wide256, GemmPairs::Large), w);
        assert_eq!(auto(big, GemmPairs::Large), p);
        assert_eq!(auto(big, GemmPairs::Never), w);
        assert_eq!(auto(wide80, GemmPairs::Always), p);
    }
}
