//! Uploading a model's weights to the device once: matrices as bf16, vectors as f32.

use crate::gpu::ops::embedding::{EmbeddingTable, TableData};
use crate::gpu::{Buffer, Device, Result};
use crate::model::{Ffn, HostTensor, ModelConfig, Weights};
use indicatif::{ProgressBar, ProgressStyle};

pub(super) struct Dense {
    pub gate: Buffer<u16>,
    pub up: Buffer<u16>,
    pub down: Buffer<u16>,
}

pub(super) struct SharedExpert {
    pub gate_inp: Buffer<f32>,
    pub ffn: Dense,
}

pub(super) enum GpuFfn {
    Dense(Dense),
    Moe(Box<Moe>),
}

pub(super) struct Moe {
    pub router: Buffer<f32>,
    pub experts: Dense,
    pub shared: Option<SharedExpert>,
}

pub(super) struct GpuLayer {
    pub attn_norm: Buffer<f32>,
    pub wq: Buffer<u16>,
    pub wk: Buffer<u16>,
    pub wv: Buffer<u16>,
    pub bq: Option<Buffer<f32>>,
    pub bk: Option<Buffer<f32>>,
    pub bv: Option<Buffer<f32>>,
    pub q_norm: Option<Buffer<f32>>,
    pub k_norm: Option<Buffer<f32>>,
    pub wo: Buffer<u16>,
    pub ffn_norm: Buffer<f32>,
    pub ffn: GpuFfn,
}

/// A model resident on one device.
pub struct GpuModel {
    pub cfg: ModelConfig,
    pub(super) token_embd: EmbeddingTable,
    pub(super) output_norm: Buffer<f32>,
    pub(super) output: Buffer<u16>,
    pub(super) layers: Vec<GpuLayer>,
}

struct Uploader<'a> {
    dev: &'a Device,
    bar: ProgressBar,
}

impl Uploader<'_> {
    fn bf16(&self, t: &HostTensor) -> Result<Buffer<u16>> {
        let bits: Vec<u16> = t
            .data
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect();
        let b = self.dev.upload(&bits, &t.name)?;
        self.bar.inc(1);
        Ok(b)
    }
    fn f32(&self, t: &HostTensor) -> Result<Buffer<f32>> {
        let b = self.dev.upload(&t.data, &t.name)?;
        self.bar.inc(1);
        Ok(b)
    }
    fn opt_f32(&self, t: &Option<HostTensor>) -> Result<Option<Buffer<f32>>> {
        t.as_ref().map(|t| self.f32(t)).transpose()
    }
    fn dense(&self, gate: &HostTensor, up: &HostTensor, down: &HostTensor) -> Result<Dense> {
        Ok(Dense {
            gate: self.bf16(gate)?,
            up: self.bf16(up)?,
            down: self.bf16(down)?,
        })
    }
}

impl GpuModel {
    /// Uploads `weights` (host f32, already validated against `cfg`) to `dev`, showing a
    /// progress bar when `progress` is set.
    pub fn upload(
        dev: &Device,
        cfg: &ModelConfig,
        weights: &Weights,
        progress: bool,
    ) -> Result<Self> {
        let bar = if progress {
            ProgressBar::new(weights.tensors().len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("uploading weights {bar:30} {pos}/{len} tensors")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let up = Uploader { dev, bar };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let ffn = match &l.ffn {
                Ffn::Dense { gate, up: u, down } => GpuFfn::Dense(up.dense(gate, u, down)?),
                Ffn::Moe {
                    router,
                    gate_exps,
                    up_exps,
                    down_exps,
                    shared,
                } => GpuFfn::Moe(Box::new(Moe {
                    router: up.f32(router)?,
                    experts: up.dense(gate_exps, up_exps, down_exps)?,
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
                wq: up.bf16(&l.wq)?,
                wk: up.bf16(&l.wk)?,
                wv: up.bf16(&l.wv)?,
                bq: up.opt_f32(&l.bq)?,
                bk: up.opt_f32(&l.bk)?,
                bv: up.opt_f32(&l.bv)?,
                q_norm: up.opt_f32(&l.q_norm)?,
                k_norm: up.opt_f32(&l.k_norm)?,
                wo: up.bf16(&l.wo)?,
                ffn_norm: up.f32(&l.ffn_norm)?,
                ffn,
            });
        }
        let model = GpuModel {
            cfg: cfg.clone(),
            token_embd: EmbeddingTable::new(
                TableData::Bf16(up.bf16(&weights.token_embd)?),
                cfg.vocab,
                cfg.hidden,
            )?,
            output_norm: up.f32(&weights.output_norm)?,
            output: up.bf16(&weights.output)?,
            layers,
        };
        up.bar.finish_and_clear();
        Ok(model)
    }
}
