//! Flash attention launch wrapper and the KV cache it reads (kernel:
//! gpu-kernels/src/flash_attention.rs: one entry per head dim, 64 and 128). The cache is
//! written by `attention_input`.

use super::to_u32;
use crate::gpu::{Device, GpuError, LaunchConfig, Result, TmaMatrix, ensure_shape};
use gpu_kernels::flash_attention::{self, BLOCK_KV, BLOCK_Q, HEAD_DIMS, THREADS, shared_bytes};

/// Fails unless the kernels have an entry for `head_dim` (64 or 128).
pub(crate) fn check_head_dim(kernel: &'static str, head_dim: usize) -> Result<()> {
    ensure_shape!(
        HEAD_DIMS.contains(&head_dim),
        kernel,
        "head_dim {head_dim}: the flash attention kernels take head_dim 64 or 128 only"
    );
    Ok(())
}

/// One layer's KV cache in the layouts flash attention reads: K `[capacity][n_kv · head_dim]`,
/// V transposed `[n_kv · head_dim][capacity]`, bf16; `capacity` a multiple of the key block.
/// V is read in boxes of 64 positions × `head_dim` rows (one KV head). Zeroed when made:
/// positions not yet written must hold finite values (masked keys get probability 0, and
/// 0 · V must stay 0).
pub struct KvCache {
    pub k: TmaMatrix,
    pub v_t: TmaMatrix,
    capacity: usize,
    head_dim: usize,
}

impl KvCache {
    /// A zeroed cache for `positions` tokens (rounded up to the key block) of `n_kv` heads of
    /// `head_dim` (64 or 128).
    pub fn new(dev: &Device, positions: usize, n_kv: usize, head_dim: usize) -> Result<Self> {
        check_head_dim("KvCache", head_dim)?;
        let capacity = positions.max(1).div_ceil(BLOCK_KV) * BLOCK_KV;
        let width = n_kv * head_dim;
        let v = dev.alloc::<u16>(width * capacity, "V cache")?;
        Ok(KvCache {
            k: dev.tma_zeros(capacity, width, "K cache")?,
            v_t: dev.tma_matrix_boxed(v, width, capacity, head_dim as u32)?,
            capacity,
            head_dim,
        })
    }

    /// Zeroes both caches, for reuse by another prompt: entries past the written positions
    /// must be finite (masked keys get probability 0, and 0 · V must stay 0).
    pub fn clear(&mut self) -> Result<()> {
        self.k.zero()?;
        self.v_t.zero()
    }

    /// A cache from existing matrices (K `[capacity][n_kv · head_dim]`, V transposed
    /// `[n_kv · head_dim][capacity]`): for tests and benchmarks that fill them directly. V's map
    /// is made again with the box the kernel reads.
    pub fn from_parts(dev: &Device, k: TmaMatrix, v_t: TmaMatrix, head_dim: usize) -> Result<Self> {
        check_head_dim("KvCache", head_dim)?;
        let capacity = k.rows();
        ensure_shape!(
            capacity.is_multiple_of(BLOCK_KV)
                && k.cols().is_multiple_of(head_dim)
                && v_t.rows() == k.cols()
                && v_t.cols() == capacity,
            "KvCache",
            "K cache {} × {} and V cache {} × {} do not match",
            k.rows(),
            k.cols(),
            v_t.rows(),
            v_t.cols()
        );
        let v_t = v_t.reboxed(dev, head_dim as u32)?;
        Ok(KvCache {
            k,
            v_t,
            capacity,
            head_dim,
        })
    }

    /// Positions the cache holds (a multiple of the key block).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The head dimension it was made for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
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
        check_head_dim(kernel, head_dim)?;
        ensure_shape!(
            head_dim == cache.head_dim(),
            kernel,
            "head_dim {head_dim}, but the KV cache is for head_dim {}",
            cache.head_dim()
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
            .check(kernel, "K cache", cache.capacity(), n_kv * head_dim)?;
        cache
            .v_t
            .check(kernel, "V cache", n_kv * head_dim, cache.capacity())?;
        to_u32(kernel, "cache size", cache.capacity() * n_kv * head_dim)?;
        to_u32(kernel, "queries", n * n_head * head_dim)?;
        Ok((n as u32, start_pos as u32))
    }
}

/// `o[i, h] = softmax(q[i, h] · K[0..=p]ᵀ / √d) · V[0..=p]` for query `i` at position
/// `p = start_pos + i`, head `h` over KV head `h / (n_head / n_kv)`. `q` and `o`: `[≥ n][n_head ·
/// head_dim]` bf16. The kernel entry is picked by `shape.head_dim` (64 or 128; others are a
/// shape error).
pub fn flash_attention(
    dev: &Device,
    q: &TmaMatrix,
    cache: &KvCache,
    o: &TmaMatrix,
    shape: AttentionShape,
) -> Result<()> {
    let hd = shape.head_dim;
    let k_name: &'static str = match hd {
        64 => "flash_attention_hd64",
        _ => "flash_attention_hd128",
    };
    let (n, start_pos) = shape.validate(k_name, cache)?;
    let width = shape.n_head * hd;
    q.check(k_name, "q", shape.n, width)?;
    o.check(k_name, "o", shape.n, width)?;
    if shape.n == 0 {
        return Ok(());
    }
    // Heads along x, query tiles along y (the kernel runs them last to first).
    let mut cfg = LaunchConfig::linear(to_u32(k_name, "heads", shape.n_head)?, THREADS)
        .with_shared(shared_bytes(hd));
    cfg.grid.1 = to_u32(k_name, "query tiles", shape.n.div_ceil(BLOCK_Q))?;
    ensure_shape!(
        cfg.grid.1 <= 65535,
        k_name,
        "{} query tiles exceed one launch",
        cfg.grid.1
    );
    let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
    let (heads, kv) = (shape.n_head as u32, shape.n_kv as u32);
    let (mq, mk, mv, out) = (q.map(), cache.k.map(), cache.v_t.map(), o.data().output());
    match hd {
        64 => flash_attention::flash_attention_hd64::launch(
            dev, cfg, mq, mk, mv, out, n, start_pos, heads, kv, scale_log2,
        ),
        128 => flash_attention::flash_attention_hd128::launch(
            dev, cfg, mq, mk, mv, out, n, start_pos, heads, kv, scale_log2,
        ),
        _ => Err(GpuError::Input(format!("head_dim {hd} passed validation"))),
    }
}
