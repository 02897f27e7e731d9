//! A warp's staging area in shared memory, for storing a tensor-core accumulator tile to
//! global memory in whole 16-byte pieces.
//!
//! In the `wgmma`/`mma` fragment layout a lane holds two adjacent columns of rows `lane / 4`
//! and `lane / 4 + 8`, so four lanes cover 16 bytes of a row: stored straight from registers,
//! one warp instruction touches 8 rows with half-filled sectors, and a tile's stores cost more
//! than its loads (H200: GEMMs with the stores removed ran 20–31% faster). Through a
//! [`WarpStage`] the warp writes its 16 rows into shared memory, then each lane stores a
//! 16-byte chunk: two 256-byte rows per instruction.

use super::{Shared, WARP_SIZE, dynamic_shared, dynamic_shared_address, lane_id, sync_warp};

/// Bytes of one staging row (128 bf16 or 64 f32 columns).
pub const STAGE_ROW_BYTES: u32 = 256;
/// Bytes of one warp's staging area: the 16 rows a warp holds of an m64 fragment tile.
pub const WARP_STAGE_BYTES: u32 = 16 * STAGE_ROW_BYTES;

/// One warp's staging area: 16 rows of 256 bytes, the 16-byte chunks of row `r`
/// XOR-swizzled by `(r << shift) % 8` so that the warp's fragment stores hit distinct banks
/// (`shift` 0 for 4-byte stores, 8 rows per instruction; 1 for 8-byte stores, which go 4
/// rows per phase).
#[derive(Clone, Copy)]
pub struct WarpStage {
    words: Shared<u32>,
    shift: u32,
}

impl WarpStage {
    /// The area at shared address `addr` (16-byte aligned, `WARP_STAGE_BYTES` long) inside a
    /// dynamic shared allocation of `shared_bytes`.
    #[inline(always)]
    pub fn at(addr: u32, shared_bytes: u32, shift: u32) -> Self {
        let all = dynamic_shared::<u32>(shared_bytes as usize / 4);
        WarpStage {
            words: all.offset((addr - dynamic_shared_address()) as usize / 4),
            shift,
        }
    }

    /// Word index of byte `byte` (a multiple of 4) of row `row`.
    #[inline(always)]
    fn word(self, row: u32, byte: u32) -> usize {
        let chunk = (byte / 16) ^ ((row << self.shift) % 8);
        (row * (STAGE_ROW_BYTES / 4) + chunk * 4 + byte % 16 / 4) as usize
    }

    /// Writes the word `w` at byte `byte` (a multiple of 4) of row `row`.
    #[inline(always)]
    pub fn put(self, row: u32, byte: u32, w: u32) {
        self.words.store(self.word(row, byte), w);
    }

    /// Writes two words at byte `byte` (a multiple of 8) of row `row`, one 8-byte store.
    #[inline(always)]
    pub fn put2(self, row: u32, byte: u32, w: [u32; 2]) {
        self.words.store2(self.word(row, byte), w);
    }

    /// After the warp has written rows of `row_bytes` (a multiple of 16, at most 256): calls
    /// `store(row, chunk, words)` for each 16-byte chunk, a lane per chunk (whole rows per
    /// instruction), then waits for the warp so the area can be written again. Full-warp call.
    #[inline(always)]
    pub fn drain(self, row_bytes: u32, mut store: impl FnMut(u32, u32, [u32; 4])) {
        sync_warp();
        let per_row = row_bytes / 16;
        let mut i = lane_id();
        while i < 16 * per_row {
            let (row, chunk) = (i / per_row, i % per_row);
            store(row, chunk, self.words.load4(self.word(row, 16 * chunk)));
            i += WARP_SIZE;
        }
        sync_warp();
    }
}
