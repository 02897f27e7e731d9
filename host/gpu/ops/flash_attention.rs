//! Flash attention launch wrapper and the KV cache it reads (kernel:
//! gpu-kernels/src/flash_attention.rs). The cache is written by `attention_input`.

use super::to_u32;
use crate::gpu::{Device, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::flash_attention::{self, BLOCK_KV, BLOCK_Q, HEAD_DIM, SHARED_BYTES, THREADS};

/// One layer's KV cache in the layouts flash attention reads: K `[capacity][n_kv · 128]`, V
/// transposed `[n_kv · 128][capacity]`, bf16; `capacity` a multiple of the key block. Zeroed
/// when made: positions not yet written must hold finite values (masked keys get probability
/// 0, and 0 · V must stay 0).
pub struct KvCache {
    pub k: TmaMatrix,
    pub v_t: TmaMatrix,
    capacity: usize,
}

impl KvCache {
    /// A zeroed cache for `positions` tokens (rounded up to the key block) of `n_kv` heads.
    pub fn new(dev: &Device, positions: usize, n_kv: usize) -> Result<Self> {
        let capacity = positions.max(1).div_ceil(BLOCK_KV) * BLOCK_KV;
        let width = n_kv * HEAD_DIM;
        Ok(KvCache {
            k: dev.tma_zeros(capacity, width, "K cache")?,
            v_t: dev.tma_zeros(width, capacity, "V cache")?,
            capacity,
        })
    }

    /// Zeroes both caches, for reuse by another prompt: entries past the written positions
    /// must be finite (masked keys get probability 0, and 0 · V must stay 0).
    pub fn clear(&mut self) -> Result<()> {
        self.k.zero()?;
        self.v_t.zero()
    }

    /// A cache from existing matrices (K `[capacity][n_kv · 128]`, V transposed `[n_kv · 128]
    /// [capacity]`): for tests and benchmarks that fill them directly.
    pub fn from_parts(k: TmaMatrix, v_t: TmaMatrix) -> Result<Self> {
        let capacity = k.rows();
        ensure_shape!(
            capacity.is_multiple_of(BLOCK_KV)
                && k.cols().is_multiple_of(HEAD_DIM)
                && v_t.rows() == k.cols()
                && v_t.cols() == capacity,
            "flash_attention_hd128",
            "K cache {} × {} and V cache {} × {} do not match",
            k.rows(),
            k.cols(),
            v_t.rows(),
            v_t.cols()
        );
        Ok(KvCache { k, v_t, capacity })
    }

    /// Positions the cache holds (a multiple of the key block).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Attention geometry for one chunk: `n` queries at positions `start_pos..start_pos + n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub n: usize,
    pub start_pos: usize,
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Checks the geometry against the kernels and `cache`; `(n, start_pos)` as u32.
    pub(crate) fn validate(&self, kernel: &'static str, cache: &KvCache) -> Result<(u32, u32)> {
        let AttentionShape {
            n,
            start_pos,
            n_head,
            n_kv,
            head_dim,
        } = *self;
        ensure_shape!(
            head_dim == HEAD_DIM,
            kernel,
            "head_dim {head_dim}: the flash attention kernel takes head_dim {HEAD_DIM} only"
        );
        ensure_shape!(
            n_kv > 0 && n_head > 0 && n_head % n_kv == 0,
            kernel,
            "{n_head} heads are not a multiple of {n_kv} KV heads"
        );
        ensure_shape!(
            start_pos + n <= cache.capacity(),
            kernel,
            "positions {start_pos}..{} exceed the cache's {}",
            start_pos + n,
            cache.capacity()
        );
        cache
            .k
            .check(kernel, "K cache", cache.capacity(), n_kv * HEAD_DIM)?;
        cache
            .v_t
            .check(kernel, "V cache", n_kv * HEAD_DIM, cache.capacity())?;
        to_u32(kernel, "cache size", cache.capacity() * n_kv * HEAD_DIM)?;
        to_u32(kernel, "queries", n * n_head * HEAD_DIM)?;
        Ok((n as u32, start_pos as u32))
    }
}

/// `o[i, h] = softmax(q[i, h] · K[0..=p]ᵀ / √d) · V[0..=p]` for query `i` at position
/// `p = start_pos + i`, head `h` over KV head `h / (n_head / n_kv)`. `q` and `o`: `[≥ n][n_head ·
/// 128]` bf16.
pub fn flash_attention(
    dev: &Device,
    q: &TmaMatrix,
    cache: &KvCache,
    o: &TmaMatrix,
    shape: AttentionShape,
) -> Result<()> {
    const K: &str = "flash_attention_hd128";
    let (n, start_pos) = shape.validate(K, cache)?;
    let width = shape.n_head * HEAD_DIM;
    q.check(K, "q", shape.n, width)?;
    o.check(K, "o", shape.n, width)?;
    if shape.n == 0 {
        return Ok(());
    }
    // Heads along x, query tiles along y (the kernel runs them last to first).
    let mut cfg =
        LaunchConfig::linear(to_u32(K, "heads", shape.n_head)?, THREADS).with_shared(SHARED_BYTES);
    cfg.grid.1 = to_u32(K, "query tiles", shape.n.div_ceil(BLOCK_Q))?;
    ensure_shape!(
        cfg.grid.1 <= 65535,
        K,
        "{} query tiles exceed one launch",
        cfg.grid.1
    );
    let scale_log2 = std::f32::consts::LOG2_E / (HEAD_DIM as f32).sqrt();
    flash_attention::flash_attention_hd128::launch(
        dev,
        cfg,
        q.map(),
        cache.k.map(),
        cache.v_t.map(),
        o.data().output(),
        n,
        start_pos,
        shape.n_head as u32,
        shape.n_kv as u32,
        scale_log2,
    )
}
