//! The types both backends share (`nvptx.rs` and `emu/` import them from here, and the façade
//! `device/mod.rs` re-exports them to kernels): launch triples, the shared-memory word trait and
//! the warp width.

/// Threads per warp on every NVIDIA GPU kiln targets.
pub const WARP_SIZE: u32 = 32;

/// Elements of shared arrays: plain 4-byte values, moved as one 32-bit word.
pub trait SharedWord: Copy {
    fn to_word(self) -> u32;
    fn from_word(w: u32) -> Self;
}
impl SharedWord for f32 {
    #[inline(always)]
    fn to_word(self) -> u32 {
        self.to_bits()
    }
    #[inline(always)]
    fn from_word(w: u32) -> Self {
        f32::from_bits(w)
    }
}
impl SharedWord for u32 {
    #[inline(always)]
    fn to_word(self) -> u32 {
        self
    }
    #[inline(always)]
    fn from_word(w: u32) -> Self {
        w
    }
}
impl SharedWord for i32 {
    #[inline(always)]
    fn to_word(self) -> u32 {
        self as u32
    }
    #[inline(always)]
    fn from_word(w: u32) -> Self {
        w as i32
    }
}

/// A launch dimension or index triple, as CUDA's `dim3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn new(x: u32, y: u32, z: u32) -> Self {
        Dim3 { x, y, z }
    }
    pub const fn count(self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}
