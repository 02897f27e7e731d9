//! A model whose weights are generated on the device from a seed (`random_fill`), in the
//! layouts `weights.rs` uploads: the full-depth benchmark's 48-layer Qwen3-30B-A3B-shaped
//! model (~60 GB) takes well under a second this way, where host synthesis and upload would
//! take many minutes. Same config and seed → same bits on every run and device.
//!
//! Values: every matrix uniform with standard deviation 1/√(input width) (as `kiln synth`'s
//! normal weights), the attention output projection's times `synth::ATTN_OUTPUT_GAIN` (so the
//! routing reaches every expert at depth, as a trained model's does: see there), norms uniform
//! on 1 ± 0.1, biases on ± 0.1, the router's logits of standard deviation ≈ 1; so activations
//! stay O(1) through depth.

use super::weights::{Dense, Experts, GpuFfn, GpuLayer, GpuModel, Moe, SharedExpert};
use crate::gpu::ops::embedding::{EmbeddingTable, TableData};
use crate::gpu::ops::flash_attention::check_head_dim;
use crate::gpu::ops::gemm_wgmma::interleaved_rows;
use crate::gpu::ops::moe_router::RouterWeights;
use crate::gpu::ops::random_fill::{Fill, fill_bf16, fill_f32};
use crate::gpu::{Buffer, Device, Result, TmaMatrix};
use crate::model::ModelConfig;
use crate::synth::ATTN_OUTPUT_GAIN;
use gpu_kernels::random_fill::mix64;

/// Hands out one seed per tensor, in a fixed order, and fills it.
struct Generator<'a> {
    dev: &'a Device,
    seed: u64,
    tensors: u64,
}

impl Generator<'_> {
    fn next_seed(&mut self) -> u64 {
        self.tensors += 1;
        mix64(self.seed ^ self.tensors.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }
    /// `len` bf16 weights of input width `cols`, standard deviation `gain`/√`cols`.
    fn bf16(&mut self, len: usize, (cols, gain): (usize, f32), what: &str) -> Result<Buffer<u16>> {
        let data = self.dev.alloc::<u16>(len, what)?;
        let fill = Fill::with_std(self.next_seed(), gain / (cols as f32).sqrt());
        fill_bf16(self.dev, &data, len, fill)?;
        Ok(data)
    }
    /// A bf16 `rows × cols` weight matrix.
    fn matrix(&mut self, rows: usize, cols: usize, what: &str) -> Result<TmaMatrix> {
        self.matrix_with_gain(rows, cols, 1.0, what)
    }
    fn matrix_with_gain(
        &mut self,
        rows: usize,
        cols: usize,
        gain: f32,
        what: &str,
    ) -> Result<TmaMatrix> {
        let data = self.bf16(rows * cols, (cols, gain), what)?;
        self.dev.tma_matrix(data, rows, cols)
    }
    fn vector(&mut self, len: usize, scale: f32, offset: f32, what: &str) -> Result<Buffer<f32>> {
        let data = self.dev.alloc::<f32>(len, what)?;
        let seed = self.next_seed();
        fill_f32(
            self.dev,
            &data,
            len,
            Fill {
                seed,
                scale,
                offset,
            },
        )?;
        Ok(data)
    }
    fn norm(&mut self, len: usize, what: &str) -> Result<Buffer<f32>> {
        self.vector(len, 0.1, 1.0, what)
    }
    fn dense(&mut self, ff: usize, hidden: usize) -> Result<Dense> {
        Ok(Dense {
            gate_up: self.matrix(interleaved_rows(ff), hidden, "gate|up")?,
            down: self.matrix(hidden, ff, "down")?,
        })
    }
}

impl GpuModel {
    /// Every weight of a `cfg`-shaped model generated on `dev` from `seed`.
    pub fn synthetic(dev: &Device, cfg: &ModelConfig, seed: u64) -> Result<Self> {
        check_head_dim("GPU pipeline", cfg.head_dim)?;
        let mut g = Generator {
            dev,
            seed,
            tensors: 0,
        };
        let h = cfg.hidden;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            let attn_norm = g.norm(h, "attn_norm")?;
            let wqkv = g.matrix(cfg.q_dim() + 2 * cfg.kv_dim(), h, "Q|K|V")?;
            let bqkv = match cfg.qkv_bias {
                true => Some(g.vector(cfg.q_dim() + 2 * cfg.kv_dim(), 0.1, 0.0, "Q|K|V bias")?),
                false => None,
            };
            let (q_norm, k_norm) = match cfg.qk_norm {
                true => (
                    Some(g.norm(cfg.head_dim, "q_norm")?),
                    Some(g.norm(cfg.head_dim, "k_norm")?),
                ),
                false => (None, None),
            };
            let gain = ATTN_OUTPUT_GAIN as f32;
            let wo = g.matrix_with_gain(h, cfg.q_dim(), gain, "output projection")?;
            let ffn_norm = g.norm(h, "ffn_norm")?;
            let ffn = if cfg.arch.is_moe() {
                let (ne, fe) = (cfg.n_expert, cfg.ff_exp);
                let router_scale = 3f32.sqrt() / (h as f32).sqrt();
                GpuFfn::Moe(Box::new(Moe {
                    router: RouterWeights::new(
                        dev,
                        &g.vector(ne * h, router_scale, 0.0, "router")?,
                        ne,
                        h,
                    )?,
                    experts: Experts {
                        gate_up: g.matrix(ne * interleaved_rows(fe), h, "experts gate|up")?,
                        down: g.matrix(ne * h, fe, "experts down")?,
                    },
                    shared: match cfg.arch.shared_expert() {
                        true => Some(SharedExpert {
                            gate_inp: g.vector(h, router_scale, 0.0, "shared gate")?,
                            ffn: g.dense(cfg.ff_shexp, h)?,
                        }),
                        false => None,
                    },
                }))
            } else {
                GpuFfn::Dense(Box::new(g.dense(cfg.ff, h)?))
            };
            layers.push(GpuLayer {
                attn_norm,
                wqkv,
                bqkv,
                q_norm,
                k_norm,
                wo,
                ffn_norm,
                ffn,
            });
        }
        let table = g.bf16(cfg.vocab * h, (h, 1.0), "token_embd")?;
        let inv_freq = (0..cfg.head_dim / 2)
            .map(|i| {
                let f = f64::from(cfg.rope_base).powf(-2.0 * i as f64 / cfg.head_dim as f64);
                (f * f64::from(cfg.rope_freq_scale)) as f32
            })
            .collect();
        Ok(GpuModel {
            cfg: cfg.clone(),
            inv_freq,
            token_embd: EmbeddingTable::new(TableData::Bf16(table), cfg.vocab, h)?,
            output_norm: g.norm(h, "output_norm")?,
            output: g.matrix(cfg.vocab, h, "output")?,
            layers,
            scratch: Default::default(),
        })
    }
}
