//! The dense GEMMs' tilings (the order their persistent blocks walk the tiles in), and the
//! cluster pairs of the wide one: two blocks of a cluster take two row tiles of the same
//! column block and share its B tile by multicast TMA, so the pair reads B from L2 once.
//! Which block loads what, and in which order the tiles come, changes no arithmetic: every
//! element gets the bits of the unpaired wide kernel.

use super::{BM, BN, Split, Tile, WIDE_BN};
use crate::device::async_copy::{Mbarrier, TensorMap, tma_load_2d, tma_load_2d_multicast};
use crate::device::cluster::{cluster_ctarank, cluster_sync};
use crate::device::*;

/// Whether a launch runs as clusters of two blocks that share one operand: each block loads
/// half of it and multicasts that half into both, and a slot is refilled only when the
/// consumers of both blocks have released it (each arrives on its own block's `empty` barrier
/// and on the peer's). The tile walk gives blocks `2p` and `2p + 1` tiles with the same B rows
/// and the same K slices.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Share {
    None,
    /// The B tile of a wide split, as two boxes of `BN` rows: block rank `r` loads box `r`.
    B,
}

/// A block's side of its pair (`Share::B`), or nothing (`Share::None`): the barrier counts,
/// the syncs and the loads and releases of the shared operand that [`super::persistent`] makes.
#[derive(Clone, Copy)]
pub(super) struct Pair {
    paired: bool,
    rank: u32,
    peer: u32,
}

impl Pair {
    #[inline(always)]
    pub(super) fn new(share: Share) -> Pair {
        let paired = share != Share::None;
        let rank = if paired { cluster_ctarank() } else { 0 };
        Pair {
            paired,
            rank,
            peer: rank ^ 1,
        }
    }

    /// Arrivals that free a slot: each consumer warpgroup releases it once in its own block
    /// and, paired, once in the peer's, whose producer multicasts into this block's slot too.
    #[inline(always)]
    pub(super) fn empty_arrivals(self) -> u32 {
        if self.paired { 4 } else { 2 }
    }

    /// After the barrier inits: paired, the peer multicasts into this block's slots and
    /// arrives on its barriers, so the whole cluster waits.
    #[inline(always)]
    pub(super) fn sync_after_init(self) {
        if self.paired {
            cluster_sync();
        } else {
            sync_threads();
        }
    }

    /// Before exiting: paired, neither block leaves while the peer may still multicast into
    /// it or arrive on its barriers. Every thread of the block calls it.
    #[inline(always)]
    pub(super) fn sync_before_exit(self) {
        if self.paired {
            cluster_sync();
        }
    }

    /// Loads box `r` (B rows `y..y + BN`, K from `kx`) of the B tile into `dst`, crediting
    /// `full`: unpaired, every box; paired, only this block's box, into both blocks.
    #[inline(always)]
    pub(super) fn load_b(
        self,
        dst: u32,
        map_w: In<TensorMap>,
        (kx, y): (u32, u32),
        r: u32,
        full: Mbarrier,
    ) {
        if !self.paired {
            tma_load_2d(dst, map_w, kx, y, full);
        } else if r == self.rank {
            tma_load_2d_multicast(dst, map_w, kx, y, full, 0b11);
        }
    }

    /// A consumer warpgroup's release of a slot (`release`: its one arriving thread), in this
    /// block and, paired, in the peer's.
    #[inline(always)]
    pub(super) fn free(self, empty: Mbarrier, release: bool) {
        empty.arrive_if(release);
        if self.paired {
            empty.arrive_cluster_if(self.peer, release);
        }
    }
}

/// How a dense launch is tiled: narrow (`BN` columns per block), wide (`WIDE_BN`), or wide in
/// clusters of two sharing B (pairs of row tiles). The same arithmetic for every element, so
/// the host may pick any per call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dense {
    Narrow,
    Wide,
    WidePaired,
}

impl Dense {
    /// The block's split and what it shares with its cluster.
    #[inline(always)]
    pub(super) fn pipe(self) -> (Split, Share) {
        match self {
            Dense::Narrow => (Split::Rows, Share::None),
            Dense::Wide => (Split::WideRows, Share::None),
            Dense::WidePaired => (Split::WideRows, Share::B),
        }
    }

    /// Tile `t` of a launch over `n_rows` rows and `n_cols` B rows, all `k_slices` K slices
    /// in one segment.
    #[inline(always)]
    pub(super) fn tile(self, t: u32, (n_rows, n_cols): (u32, u32), k_slices: u32) -> Option<Tile> {
        let cols = self.pipe().0.cols();
        match self {
            Dense::Narrow | Dense::Wide => {
                dense_tile(t, (n_rows, n_cols, cols), (k_slices, k_slices))
            }
            Dense::WidePaired => paired_tile(t, (n_rows, n_cols, cols), k_slices),
        }
    }
}

/// Tile `t` of a dense launch run as clusters sharing B ([`Share::B`]) over `n_rows` rows and
/// `n_cols` B rows in blocks of `cols`: tiles `2p` and `2p + 1` are row tiles `2i` and `2i + 1`
/// of the same column block (pairs `p` in [`raster`] order over row pairs and column blocks,
/// bands of `RASTER_ROWS` row tiles), both over all `k_slices`. Where the row tiles are odd in
/// number, the last pair's second tile has no rows: its block computes a tile nobody stores
/// and loads its half of B for the peer.
#[inline(always)]
fn paired_tile(t: u32, (n_rows, n_cols, cols): (u32, u32, u32), k_slices: u32) -> Option<Tile> {
    let units = (n_rows.div_ceil(2 * BM as u32), n_cols.div_ceil(cols));
    let (row_pair, col) = raster(t / 2, units, RASTER_ROWS / 2)?;
    let r = t % 2;
    Some(Tile {
        row0: (2 * row_pair + r) * BM as u32,
        end: n_rows,
        w_row0: col * cols,
        col,
        slices: (0, k_slices),
    })
}

// Paired, block rank `r` loads box `r` of the B tile: a wide tile is exactly two boxes.
const _: () = assert!(Split::WideRows.b_bytes() == 2 * super::B_BYTES && WIDE_BN == 2 * BN);

/// Row tiles per band of the paired tile walk ([`raster`]).
pub const RASTER_ROWS: u32 = 16;

/// Position `u` of a walk over `rows × cols` units (row pairs × column blocks) in bands of
/// `band` rows, rows varying fastest within a band: the ≈ one cluster per two multiprocessors
/// running at once then cover a near-square patch of the output (16 × 8 wide tiles at 8192³),
/// so they share their B columns in L2 as well as their A rows. `None` past the end.
///
/// Measured on the H200 (session 10, ncu at 8192³): the paired kernel read 1.05 TB/s from
/// DRAM in this order against 1.78 walking each row pair across every column block, ran at
/// 1.57 GHz against 1.51 (the traffic's power costs clock) in the same 2.2 M cycles: 1.42
/// against 1.47 ms (cuBLAS 1.40). The unpaired walk keeps rows across columns ([`dense_tile`]):
/// there this order cut DRAM reads the same way but took 5% more cycles (2.34 against 2.22 M).
#[inline(always)]
pub fn raster(u: u32, (rows, cols): (u32, u32), band: u32) -> Option<(u32, u32)> {
    let band_units = band * cols;
    let first = u / band_units * band;
    if first >= rows {
        return None;
    }
    let height = (rows - first).min(band);
    let r = u % band_units;
    let (row, col) = (first + r % height, r / height);
    (col < cols).then_some((row, col))
}

/// Tile `t` of a dense launch over `n_rows` rows and `n_cols` B rows in blocks of `cols`, K in
/// segments of `segment` slices (`k_slices` in all; one segment unless K-segmented): column
/// blocks vary fastest, so the blocks running at once share their A rows, then segments.
#[inline(always)]
pub(super) fn dense_tile(
    t: u32,
    (n_rows, n_cols, cols): (u32, u32, u32),
    (k_slices, segment): (u32, u32),
) -> Option<Tile> {
    let segment = segment.max(1);
    let (col_blocks, segments) = (n_cols.div_ceil(cols), k_slices.div_ceil(segment).max(1));
    let (rest, col) = (t / col_blocks, t % col_blocks);
    let (row_tile, seg) = (rest / segments, rest % segments);
    let row0 = row_tile * BM as u32;
    let k0 = seg * segment;
    (row0 < n_rows).then_some(Tile {
        row0,
        end: n_rows,
        w_row0: col * cols,
        col,
        slices: (k0, segment.min(k_slices - k0)),
    })
}
