//! KV append and wave attention launch wrappers (kernels: gpu-kernels/src/attention.rs).

use super::{check_len, to_u32};
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::attention::{self, KEY_TILE, MAX_HEAD_DIM, PV_DIMS, QUERY_TILE, SOFTMAX_THREADS};

/// One layer's K and V cache: `[positions][n_kv][head_dim]` bf16 each.
pub struct KvCache {
    pub k: Buffer<u16>,
    pub v: Buffer<u16>,
}

impl KvCache {
    /// A zeroed cache for `positions` rows of `kv_width` (= n_kv · head_dim).
    pub fn new(dev: &Device, positions: usize, kv_width: usize) -> Result<Self> {
        Ok(KvCache {
            k: dev.alloc(positions * kv_width, "K cache")?,
            v: dev.alloc(positions * kv_width, "V cache")?,
        })
    }
}

/// Attention geometry for one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Chunk rows (queries) and the cache position of row 0.
    pub n: usize,
    pub start_pos: usize,
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Keys the chunk's last query attends to; the score rows' stride.
    pub fn kv_len(&self) -> usize {
        self.start_pos + self.n
    }

    /// Elements of one cache row (`n_kv · head_dim`).
    pub fn kv_width(&self) -> usize {
        self.n_kv * self.head_dim
    }

    /// Queries per wave so that a wave's scores fit `budget_bytes` (at least one query).
    pub fn wave_len(&self, budget_bytes: usize) -> usize {
        let row_bytes = self.n_head * self.kv_len() * 4;
        (budget_bytes / row_bytes.max(1)).clamp(1, self.n.max(1))
    }

    /// f32 elements of score scratch a wave of `wave_len` queries needs.
    pub fn scratch_len(&self, wave_len: usize) -> usize {
        wave_len * self.n_head * self.kv_len()
    }

    /// Checks the geometry the kernels assume, and that the caches (`kv_len` rows) and the
    /// queries index in 32 bits; then the chunk's (`start_pos`, `n`) as u32.
    fn validate(&self, kernel: &'static str) -> Result<(u32, u32)> {
        let AttentionShape {
            n,
            start_pos,
            n_head,
            n_kv,
            head_dim,
        } = *self;
        ensure_shape!(
            n_kv > 0 && n_head % n_kv == 0,
            kernel,
            "{n_head} heads are not a multiple of {n_kv} KV heads"
        );
        ensure_shape!(
            head_dim % 32 == 0 && head_dim > 0 && head_dim <= MAX_HEAD_DIM,
            kernel,
            "head_dim {head_dim} must be a multiple of 32 up to {MAX_HEAD_DIM}"
        );
        to_u32(kernel, "cache size", self.kv_len() * self.kv_width())?;
        to_u32(kernel, "queries", n * n_head * head_dim)?;
        Ok((start_pos as u32, n as u32))
    }
}

/// Appends the chunk's `shape.n` rows of K and V (`[n][kv_width]` f32) to the bf16 caches at
/// rows `start_pos..start_pos + n`.
pub fn kv_append(
    dev: &Device,
    k: &Buffer<f32>,
    v: &Buffer<f32>,
    cache: &KvCache,
    shape: AttentionShape,
) -> Result<()> {
    const K: &str = "kv_append";
    let (start_pos, n) = shape.validate(K)?;
    let width = shape.kv_width();
    let elems = shape.n * width;
    check_len(K, "k", k, elems)?;
    check_len(K, "v", v, elems)?;
    check_len(K, "k_cache", &cache.k, shape.kv_len() * width)?;
    check_len(K, "v_cache", &cache.v, shape.kv_len() * width)?;
    if elems == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::covering(elems, 256);
    let (k, v, kc, vc) = (k.input(), v.input(), cache.k.output(), cache.v.output());
    attention::kv_append::launch(dev, cfg, k, v, kc, vc, start_pos, n, width as u32)
}

/// Causal GQA attention of `q` (`[n][n_head][head_dim]` f32) over cache rows
/// `0..start_pos + n`, into `o` (same shape as `q`), in waves of `wave_len` queries whose
/// scores live in `scratch` (at least `shape.scratch_len(wave_len)` elements). The wave length
/// decides only which queries share a launch, never the results.
pub fn attention(
    dev: &Device,
    q: &Buffer<f32>,
    cache: &KvCache,
    o: &Buffer<f32>,
    scratch: &Buffer<f32>,
    shape: AttentionShape,
    wave_len: usize,
) -> Result<()> {
    const K: &str = "attention";
    let (sp, _) = shape.validate(K)?;
    let AttentionShape {
        n,
        n_head,
        head_dim,
        ..
    } = shape;
    let widest = wave_len.min(n);
    ensure_shape!(
        wave_len > 0 && widest <= 65535,
        K,
        "wave length {wave_len} must be in 1..=65535"
    );
    let kv_len = shape.kv_len();
    check_len(K, "q", q, n * n_head * head_dim)?;
    check_len(K, "o", o, n * n_head * head_dim)?;
    check_len(K, "k_cache", &cache.k, kv_len * shape.kv_width())?;
    check_len(K, "v_cache", &cache.v, kv_len * shape.kv_width())?;
    check_len(K, "scratch", scratch, shape.scratch_len(widest))?;
    to_u32(K, "scratch size", shape.scratch_len(widest))?;
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let (nh, nk, hd, stride) = (
        n_head as u32,
        shape.n_kv as u32,
        head_dim as u32,
        kv_len as u32,
    );
    let mut first = 0;
    while first < n {
        let len = wave_len.min(n - first);
        let keys = shape.start_pos + first + len;
        let (f, l) = (first as u32, len as u32);
        let q_tiles = len.div_ceil(QUERY_TILE) as u32;
        let scores = LaunchConfig {
            grid: (keys.div_ceil(KEY_TILE as usize) as u32, nh, q_tiles),
            block: (KEY_TILE, 1, 1),
            shared_bytes: 0,
        };
        let (qi, kc, so) = (q.input(), cache.k.input(), scratch.output());
        attention::attn_scores::launch(
            dev, scores, qi, kc, so, f, l, sp, nh, nk, hd, stride, scale,
        )?;
        let softmax = LaunchConfig {
            grid: (nh, l, 1),
            block: (SOFTMAX_THREADS, 1, 1),
            shared_bytes: 0,
        };
        attention::attn_softmax::launch(dev, softmax, scratch.output(), f, sp, nh, stride)?;
        let pv = LaunchConfig {
            grid: (nh, q_tiles, 1),
            block: (hd / PV_DIMS as u32, 1, 1),
            shared_bytes: 0,
        };
        let (si, vc, oo) = (scratch.input(), cache.v.input(), o.output());
        attention::attn_pv::launch(dev, pv, si, vc, oo, f, l, sp, nh, nk, hd, stride)?;
        first += len;
    }
    Ok(())
}
