//! Uploading a model's weights to the device once, in the layouts the kernels read: matrices as
//! bf16 [`TmaMatrix`]es (Q, K and V stacked into one projection; gate and up interleaved for the
//! fused SwiGLU GEMM), vectors as f32, and the MoE router as three bf16 parts whose sum is
//! its f32 weights exactly ([`RouterWeights`]). For NORM-RoPE archs (llama) the Q and
//! K rows are reordered per head so that the kernels' NEOX rotation computes NORM RoPE
//! (`norm_to_neox_rows`): one attention-input kernel serves both pairings.

use super::scratch::ScratchPool;
use crate::gpu::ops::embedding::{EmbeddingTable, TableData};
use crate::gpu::ops::flash_attention::check_head_dim;
use crate::gpu::ops::gemm_wgmma::{interleave_gate_up, interleaved_rows};
use crate::gpu::ops::moe_router::RouterWeights;
use crate::gpu::{Buffer, Device, Result, TmaMatrix};
use crate::model::{Ffn, HostTensor, ModelConfig, RopeType, Weights};

/// A SwiGLU FFN: gate|up interleaved `[interleaved_rows(ff)][hidden]`, down `[hidden][ff]`.
pub(super) struct Dense {
    pub gate_up: TmaMatrix,
    pub down: TmaMatrix,
}

/// Every expert of a MoE layer, stacked: gate|up `[n_expert · interleaved_rows(ff)][hidden]`,
/// down `[n_expert · hidden][ff]`.
pub(super) struct Experts {
    pub gate_up: TmaMatrix,
    pub down: TmaMatrix,
}

pub(super) struct SharedExpert {
    pub gate_inp: Buffer<f32>,
    pub ffn: Dense,
}

pub(super) enum GpuFfn {
    Dense(Box<Dense>),
    Moe(Box<Moe>),
}

pub(super) struct Moe {
    pub router: RouterWeights,
    pub experts: Experts,
    pub shared: Option<SharedExpert>,
}

pub(super) struct GpuLayer {
    pub attn_norm: Buffer<f32>,
    /// Q, K and V stacked: `[q_dim + 2·kv_dim][hidden]`, and their biases (qwen2) likewise.
    pub wqkv: TmaMatrix,
    pub bqkv: Option<Buffer<f32>>,
    pub q_norm: Option<Buffer<f32>>,
    pub k_norm: Option<Buffer<f32>>,
    pub wo: TmaMatrix,
    pub ffn_norm: Buffer<f32>,
    pub ffn: GpuFfn,
}

/// A model resident on one device.
pub struct GpuModel {
    pub cfg: ModelConfig,
    /// RoPE's frequency per pair (`Weights::rope_frequencies`, rounded once to f32).
    pub(super) inv_freq: Vec<f32>,
    pub(super) token_embd: EmbeddingTable,
    pub(super) output_norm: Buffer<f32>,
    pub(super) output: TmaMatrix,
    pub(super) layers: Vec<GpuLayer>,
    /// Activations and KV caches kept between prompts.
    pub(super) scratch: ScratchPool,
}

/// The rows of `data` (`[n_heads · head_dim][cols]`, one head after another) reordered within
/// each head from NORM RoPE order to NEOX order: new row `i < head_dim / 2` is old row `2i`,
/// new row `head_dim / 2 + i` is old row `2i + 1`. The attention-input kernel rotates pairs
/// `(i, i + head_dim / 2)` (NEOX); on rows reordered so, that is NORM RoPE's rotation of the
/// pairs `(2i, 2i + 1)`, with the results in the reordered positions. Q and K get the same
/// reordering, so every Q·K dot product, and hence attention, is unchanged (V is not
/// reordered). This undoes llama.cpp's converter, which permutes HF's rows into NORM order.
fn norm_to_neox_rows(data: &[f32], cols: usize, head_dim: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for head in data.chunks_exact(head_dim * cols) {
        for r in 0..head_dim {
            let old = if r < half { 2 * r } else { 2 * (r - half) + 1 };
            out.extend_from_slice(&head[old * cols..(old + 1) * cols]);
        }
    }
    out
}

fn bf16_bits(data: &[f32]) -> Vec<u16> {
    data.iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect()
}

struct Uploader<'a> {
    dev: &'a Device,
    /// Called with the number of host tensors each upload consumed.
    on_tensors: &'a dyn Fn(u64),
    /// Q/K rows (and their biases and QK-norm weights) go to NEOX order (NORM-RoPE archs).
    reorder_qk: Option<usize>,
}

impl Uploader<'_> {
    /// A bf16 matrix of `rows × cols` from already converted bits.
    fn matrix(&self, bits: &[u16], rows: usize, cols: usize, what: &str) -> Result<TmaMatrix> {
        let buf = self.dev.upload(bits, what)?;
        self.dev.tma_matrix(buf, rows, cols)
    }
    /// One weight matrix `[rows][cols]` (GGUF `ne = [cols, rows]`).
    fn bf16(&self, t: &HostTensor) -> Result<TmaMatrix> {
        let cols = t.cols();
        let m = self.matrix(&bf16_bits(&t.data), t.data.len() / cols, cols, &t.name)?;
        (self.on_tensors)(1);
        Ok(m)
    }
    fn f32(&self, t: &HostTensor) -> Result<Buffer<f32>> {
        let b = self.dev.upload(&t.data, &t.name)?;
        (self.on_tensors)(1);
        Ok(b)
    }
    /// A Q or K tensor's data (weights `[heads · head_dim][cols]`, a bias, a QK-norm weight),
    /// in the order the attention-input kernel's NEOX rotation needs.
    fn qk_rows(&self, t: &HostTensor, cols: usize) -> Vec<f32> {
        match self.reorder_qk {
            Some(hd) => norm_to_neox_rows(&t.data, cols, hd),
            None => t.data.clone(),
        }
    }
    /// A QK-norm weight, reordered like its head's rows.
    fn qk_norm(&self, t: &Option<HostTensor>) -> Result<Option<Buffer<f32>>> {
        t.as_ref()
            .map(|t| {
                let b = self.dev.upload(&self.qk_rows(t, 1), &t.name)?;
                (self.on_tensors)(1);
                Ok(b)
            })
            .transpose()
    }
    /// `experts` stacked (gate, up) pairs of `[ff][hidden]`, interleaved per expert.
    fn gate_up(&self, gate: &HostTensor, up: &HostTensor, experts: usize) -> Result<TmaMatrix> {
        let hidden = gate.cols();
        let ff = gate.data.len() / hidden / experts;
        let (g, u) = (bf16_bits(&gate.data), bf16_bits(&up.data));
        let per = ff * hidden;
        let mut bits = Vec::with_capacity(experts * interleaved_rows(ff) * hidden);
        for e in 0..experts {
            let span = e * per..(e + 1) * per;
            bits.extend(interleave_gate_up(&g[span.clone()], &u[span], ff, hidden));
        }
        let name = format!("{} | {}", gate.name, up.name);
        let m = self.matrix(&bits, experts * interleaved_rows(ff), hidden, &name)?;
        (self.on_tensors)(2);
        Ok(m)
    }
    fn dense(&self, gate: &HostTensor, up: &HostTensor, down: &HostTensor) -> Result<Dense> {
        Ok(Dense {
            gate_up: self.gate_up(gate, up, 1)?,
            down: self.bf16(down)?,
        })
    }
    /// Q, K and V stacked into one `[q + 2·kv][hidden]` projection.
    fn qkv(&self, wq: &HostTensor, wk: &HostTensor, wv: &HostTensor) -> Result<TmaMatrix> {
        let hidden = wq.cols();
        let mut data = self.qk_rows(wq, hidden);
        data.extend(self.qk_rows(wk, hidden));
        data.extend_from_slice(&wv.data);
        let name = format!("{} | {} | {}", wq.name, wk.name, wv.name);
        let m = self.matrix(&bf16_bits(&data), data.len() / hidden, hidden, &name)?;
        (self.on_tensors)(3);
        Ok(m)
    }
    /// The Q, K, V biases stacked (zeros for a missing one), if any is present.
    fn qkv_bias(
        &self,
        l: &crate::model::LayerWeights,
        cfg: &ModelConfig,
    ) -> Result<Option<Buffer<f32>>> {
        if l.bq.is_none() && l.bk.is_none() && l.bv.is_none() {
            return Ok(None);
        }
        let part = |b: &Option<HostTensor>, len: usize, qk: bool| match b {
            Some(t) => {
                (self.on_tensors)(1);
                if qk {
                    self.qk_rows(t, 1)
                } else {
                    t.data.clone()
                }
            }
            None => vec![0.0; len],
        };
        let mut data = part(&l.bq, cfg.q_dim(), true);
        data.extend(part(&l.bk, cfg.kv_dim(), true));
        data.extend(part(&l.bv, cfg.kv_dim(), false));
        Ok(Some(self.dev.upload(&data, "Q|K|V bias")?))
    }
}

impl Dense {
    fn bytes(&self) -> u64 {
        self.gate_up.bytes() + self.down.bytes()
    }
}

impl GpuLayer {
    fn bytes(&self) -> u64 {
        let opt = |b: &Option<Buffer<f32>>| b.as_ref().map_or(0, Buffer::bytes);
        let ffn = match &self.ffn {
            GpuFfn::Dense(d) => d.bytes(),
            GpuFfn::Moe(m) => {
                m.router.parts().bytes()
                    + m.experts.gate_up.bytes()
                    + m.experts.down.bytes()
                    + m.shared
                        .as_ref()
                        .map_or(0, |s| s.gate_inp.bytes() + s.ffn.bytes())
            }
        };
        self.attn_norm.bytes()
            + self.wqkv.bytes()
            + opt(&self.bqkv)
            + opt(&self.q_norm)
            + opt(&self.k_norm)
            + self.wo.bytes()
            + self.ffn_norm.bytes()
            + ffn
    }
}

/// What one decode step (one token, attending to `context` positions) must read from device
/// memory, counted from the model as it is stored there: the roofline of decoding at batch 1.
/// In words: [`DECODE_BYTES`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeBytes {
    /// Every layer's weights except the routed experts: norms, Q|K|V (with biases and QK
    /// norms), the output projection, the MoE router (three bf16 parts) and shared expert, or
    /// the dense FFN.
    pub layer_weights: u64,
    /// Per MoE layer, `n_expert_used` experts' gate|up and down: the experts one token reaches.
    pub routed_experts: u64,
    /// The final norm and the whole LM head.
    pub lm_head: u64,
    /// One row of the embedding table.
    pub embedding_row: u64,
    /// K and V (bf16) of `context` positions in every layer.
    pub kv_cache: u64,
}

impl DecodeBytes {
    pub fn total(&self) -> u64 {
        self.layer_weights + self.routed_experts + self.lm_head + self.embedding_row + self.kv_cache
    }
}

/// [`DecodeBytes`]'s formula, for reports.
pub const DECODE_BYTES: &str = "sum over layers of (every weight matrix and vector except the \
    routed experts, router included, as stored: bf16 matrices, f32 vectors, router as 3 bf16) + \
    n_layer * n_expert_used * (one expert's gate|up + down, bf16) + final norm + LM head (bf16) + one \
    embedding row + n_layer * 2 (K and V) * context * n_kv_head * head_dim * 2 bytes (bf16)";

impl GpuModel {
    /// Bytes one decode step reads at `context` positions (see [`DecodeBytes`]); tensor maps
    /// are left out (128 bytes each).
    pub fn decode_bytes(&self, context: usize) -> DecodeBytes {
        let cfg = &self.cfg;
        let m = |t: &TmaMatrix| t.data().bytes();
        let opt = |b: &Option<Buffer<f32>>| b.as_ref().map_or(0, Buffer::bytes);
        let mut out = DecodeBytes::default();
        for l in &self.layers {
            out.layer_weights += l.attn_norm.bytes()
                + m(&l.wqkv)
                + opt(&l.bqkv)
                + opt(&l.q_norm)
                + opt(&l.k_norm)
                + m(&l.wo)
                + l.ffn_norm.bytes();
            match &l.ffn {
                GpuFfn::Dense(d) => out.layer_weights += m(&d.gate_up) + m(&d.down),
                GpuFfn::Moe(moe) => {
                    out.layer_weights += m(moe.router.parts())
                        + moe.shared.as_ref().map_or(0, |s| {
                            s.gate_inp.bytes() + m(&s.ffn.gate_up) + m(&s.ffn.down)
                        });
                    let experts = cfg.n_expert.max(1) as u64;
                    let one = (m(&moe.experts.gate_up) + m(&moe.experts.down)) / experts;
                    out.routed_experts += one * cfg.n_expert_used.min(cfg.n_expert) as u64;
                }
            }
        }
        out.lm_head = self.output_norm.bytes() + m(&self.output);
        out.embedding_row = self.token_embd.bytes() / cfg.vocab.max(1) as u64;
        out.kv_cache = (self.layers.len() * 2 * context * cfg.kv_dim() * 2) as u64;
        out
    }

    /// Device bytes the model keeps resident: every weight buffer in its device layout
    /// (bf16 matrices with their tensor maps, f32 vectors, the router's bf16 parts), as
    /// allocated.
    pub fn device_bytes(&self) -> u64 {
        self.token_embd.bytes()
            + self.output_norm.bytes()
            + self.output.bytes()
            + self.layers.iter().map(GpuLayer::bytes).sum::<u64>()
    }

    /// Uploads `weights` (host f32, already validated against `cfg`) to `dev`, calling
    /// `on_tensors(n)` as each group of `n` host tensors is uploaded (for progress). A head dim
    /// the attention kernels do not take (not 64 or 128) fails before anything is uploaded.
    pub fn upload(
        dev: &Device,
        cfg: &ModelConfig,
        weights: &Weights,
        on_tensors: &dyn Fn(u64),
    ) -> Result<Self> {
        check_head_dim("GPU pipeline", cfg.head_dim)?;
        let reorder_qk = (cfg.rope == RopeType::Norm).then_some(cfg.head_dim);
        let up = Uploader {
            dev,
            on_tensors,
            reorder_qk,
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let ffn = match &l.ffn {
                Ffn::Dense { gate, up: u, down } => {
                    GpuFfn::Dense(Box::new(up.dense(gate, u, down)?))
                }
                Ffn::Moe {
                    router,
                    gate_exps,
                    up_exps,
                    down_exps,
                    shared,
                } => GpuFfn::Moe(Box::new(Moe {
                    // Split on the device, from the f32 weights (freed after).
                    router: RouterWeights::new(dev, &up.f32(router)?, cfg.n_expert, cfg.hidden)?,
                    experts: Experts {
                        gate_up: up.gate_up(gate_exps, up_exps, cfg.n_expert)?,
                        down: up.bf16(down_exps)?,
                    },
                    shared: match shared {
                        Some(s) => Some(SharedExpert {
                            gate_inp: up.f32(&s.gate_inp)?,
                            ffn: up.dense(&s.gate, &s.up, &s.down)?,
                        }),
                        None => None,
                    },
                })),
            };
            layers.push(GpuLayer {
                attn_norm: up.f32(&l.attn_norm)?,
                wqkv: up.qkv(&l.wq, &l.wk, &l.wv)?,
                bqkv: up.qkv_bias(l, cfg)?,
                q_norm: up.qk_norm(&l.q_norm)?,
                k_norm: up.qk_norm(&l.k_norm)?,
                wo: up.bf16(&l.wo)?,
                ffn_norm: up.f32(&l.ffn_norm)?,
                ffn,
            });
        }
        let table = dev.upload(&bf16_bits(&weights.token_embd.data), "token_embd")?;
        (up.on_tensors)(1);
        let inv_freq = weights.rope_frequencies(cfg);
        let model = GpuModel {
            cfg: cfg.clone(),
            inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
            token_embd: EmbeddingTable::new(TableData::Bf16(table), cfg.vocab, cfg.hidden)?,
            output_norm: up.f32(&weights.output_norm)?,
            // Tied embeddings: token_embd again, as a GEMM operand (uploaded twice).
            output: up.bf16(weights.lm_head())?,
            layers,
            scratch: ScratchPool::default(),
        };
        Ok(model)
    }
}
