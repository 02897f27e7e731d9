//! KV append and wave attention launch wrappers (kernels: gpu-kernels/src/attention.rs).

use super::{check_len, to_u32};
use crate::gpu::launch::launch;
use crate::gpu::{Buffer, Device, LaunchConfig, Result, ensure_shape};
use gpu_kernels::attention::{KEY_TILE, MAX_HEAD_DIM, PV_DIMS, QUERY_TILE, SOFTMAX_THREADS};

/// Appends `n` rows of K and V (`[n][kv_width]` f32) to the bf16 caches at `start_pos`.
#[allow(clippy::too_many_arguments)]
pub fn kv_append(
    dev: &Device,
    k: &Buffer<f32>,
    v: &Buffer<f32>,
    k_cache: &Buffer<u16>,
    v_cache: &Buffer<u16>,
    start_pos: usize,
    n: usize,
    kv_width: usize,
) -> Result<()> {
    const K: &str = "kv_append";
    check_len(K, "k", k, n * kv_width)?;
    check_len(K, "v", v, n * kv_width)?;
    check_len(K, "k_cache", k_cache, (start_pos + n) * kv_width)?;
    check_len(K, "v_cache", v_cache, (start_pos + n) * kv_width)?;
    if n * kv_width == 0 {
        return Ok(());
    }
    to_u32(K, "cache size", (start_pos + n) * kv_width)?;
    let cfg = LaunchConfig::covering(n * kv_width, 256);
    let (s, nn, w) = (start_pos as u32, n as u32, kv_width as u32);
    launch!(
        dev,
        attention::kv_append,
        cfg,
        k.input(),
        v.input(),
        k_cache.output(),
        v_cache.output(),
        s,
        nn,
        w
    )
}

/// Attention geometry for one chunk.
#[derive(Clone, Copy, Debug)]
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

    /// Queries per wave so that a wave's scores fit `budget_bytes` (at least one query).
    pub fn wave_len(&self, budget_bytes: usize) -> usize {
        let row_bytes = self.n_head * self.kv_len() * 4;
        (budget_bytes / row_bytes.max(1)).clamp(1, self.n.max(1))
    }

    /// f32 elements of score scratch a wave of `wave_len` queries needs.
    pub fn scratch_len(&self, wave_len: usize) -> usize {
        wave_len * self.n_head * self.kv_len()
    }
}

/// Causal GQA attention of `q` (`[n][n_head][head_dim]` f32) over cache rows
/// `0..start_pos + n`, into `o` (same shape as `q`), in waves of `wave_len` queries whose
/// scores live in `scratch` (at least `shape.scratch_len(wave_len)` elements).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    dev: &Device,
    q: &Buffer<f32>,
    k_cache: &Buffer<u16>,
    v_cache: &Buffer<u16>,
    o: &Buffer<f32>,
    scratch: &Buffer<f32>,
    shape: AttentionShape,
    wave_len: usize,
) -> Result<()> {
    const K: &str = "attention";
    let AttentionShape {
        n,
        start_pos,
        n_head,
        n_kv,
        head_dim,
    } = shape;
    ensure_shape!(
        n_kv > 0 && n_head % n_kv == 0,
        K,
        "{n_head} heads are not a multiple of {n_kv} KV heads"
    );
    ensure_shape!(
        head_dim % 32 == 0 && head_dim <= MAX_HEAD_DIM,
        K,
        "head_dim {head_dim} must be a multiple of 32 up to {MAX_HEAD_DIM}"
    );
    ensure_shape!(wave_len > 0, K, "wave length must be positive");
    let kv_len = shape.kv_len();
    check_len(K, "q", q, n * n_head * head_dim)?;
    check_len(K, "o", o, n * n_head * head_dim)?;
    check_len(K, "k_cache", k_cache, kv_len * n_kv * head_dim)?;
    check_len(K, "v_cache", v_cache, kv_len * n_kv * head_dim)?;
    check_len(K, "scratch", scratch, shape.scratch_len(wave_len.min(n)))?;
    to_u32(K, "cache size", kv_len * n_kv * head_dim)?;
    to_u32(K, "scratch size", shape.scratch_len(wave_len.min(n)))?;
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let (sp, nh, nk, hd, stride) = (
        start_pos as u32,
        n_head as u32,
        n_kv as u32,
        head_dim as u32,
        kv_len as u32,
    );
    let mut first = 0;
    while first < n {
        let len = wave_len.min(n - first);
        let keys = start_pos + first + len;
        let (f, l) = (first as u32, len as u32);
        let q_tiles = len.div_ceil(QUERY_TILE) as u32;
        let scores = LaunchConfig {
            grid: (keys.div_ceil(KEY_TILE as usize) as u32, nh, q_tiles),
            block: (KEY_TILE, 1, 1),
            shared_bytes: 0,
        };
        ensure_shape!(
            q_tiles <= 65535,
            K,
            "wave of {len} queries is too long for one launch"
        );
        launch!(
            dev,
            attention::attn_scores,
            scores,
            q.input(),
            k_cache.input(),
            scratch.output(),
            f,
            l,
            sp,
            nh,
            nk,
            hd,
            stride,
            scale
        )?;
        let softmax = LaunchConfig {
            grid: (nh, l, 1),
            block: (SOFTMAX_THREADS, 1, 1),
            shared_bytes: 0,
        };
        launch!(
            dev,
            attention::attn_softmax,
            softmax,
            scratch.output(),
            f,
            sp,
            nh,
            stride
        )?;
        let pv = LaunchConfig {
            grid: (nh, q_tiles, 1),
            block: (hd / PV_DIMS as u32, 1, 1),
            shared_bytes: 0,
        };
        launch!(
            dev,
            attention::attn_pv,
            pv,
            scratch.input(),
            v_cache.input(),
            o.output(),
            f,
            l,
            sp,
            nh,
            nk,
            hd,
            stride
        )?;
        first += len;
    }
    Ok(())
}
