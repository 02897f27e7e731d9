//! All of a model's weights, dequantized to f32 on the host, looked up by GGUF tensor name and
//! checked against the config.

use crate::gguf::{GgmlType, GgufError, GgufFile};

use super::{ModelConfig, ModelError};

/// A dequantized tensor. `data` is row-major with GGUF's `ne0` fastest: a GGUF {in, out}
/// matrix is `out` rows of `in` elements, and an expert stack {in, out, n_expert} is
/// `n_expert` such matrices one after another.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub name: String,
    /// The type stored in the file (the GPU side converts from it).
    pub dtype: GgmlType,
    /// GGUF `ne` order.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Row length (`ne0`).
    pub fn cols(&self) -> usize {
        self.shape[0]
    }

    /// Rows of one matrix (`ne1`, or 1 for a vector).
    pub fn rows(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }

    /// Matrix `e` of a 3-D expert stack (or the whole tensor for e = 0 of a 2-D one).
    pub fn matrix(&self, e: usize) -> &[f32] {
        let n = self.rows() * self.cols();
        &self.data[e * n..(e + 1) * n]
    }
}

#[derive(Clone, Debug)]
pub struct SharedExpert {
    /// ffn_gate_inp_shexp [hidden]: the sigmoid gate's weights.
    pub gate_inp: HostTensor,
    pub gate: HostTensor,
    pub up: HostTensor,
    pub down: HostTensor,
}

// One per layer: the size difference between variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Ffn {
    Dense {
        gate: HostTensor,
        up: HostTensor,
        down: HostTensor,
    },
    Moe {
        /// ffn_gate_inp [n_expert][hidden]
        router: HostTensor,
        /// [n_expert][ff_exp][hidden]
        gate_exps: HostTensor,
        up_exps: HostTensor,
        /// [n_expert][hidden][ff_exp]
        down_exps: HostTensor,
        shared: Option<SharedExpert>,
    },
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: HostTensor,
    pub wq: HostTensor,
    pub wk: HostTensor,
    pub wv: HostTensor,
    pub bq: Option<HostTensor>,
    pub bk: Option<HostTensor>,
    pub bv: Option<HostTensor>,
    pub q_norm: Option<HostTensor>,
    pub k_norm: Option<HostTensor>,
    pub wo: HostTensor,
    pub ffn_norm: HostTensor,
    pub ffn: Ffn,
}

#[derive(Clone, Debug)]
pub struct Weights {
    pub token_embd: HostTensor,
    pub output_norm: HostTensor,
    /// The LM head; `None` when the file has no `output.weight` (tied embeddings: the head is
    /// `token_embd`, as llama.cpp does). Use [`Weights::lm_head`].
    pub output: Option<HostTensor>,
    /// Llama 3.x's RoPE frequency factors `rope_freqs.weight` `[head_dim / 2]`: frequency `i`
    /// is divided by factor `i` (llama.cpp's `freq_factors`).
    pub rope_freqs: Option<HostTensor>,
    pub layers: Vec<LayerWeights>,
}

/// Which stored types a tensor may have. Vectors (norms, biases, gates) and the router must be
/// float: llama.cpp keeps them F32, and a block-quantized vector would be nonsense.
#[derive(Clone, Copy)]
enum Kind {
    Float,
    Any,
}

impl Kind {
    fn allows(self, t: GgmlType) -> bool {
        match self {
            Kind::Float => matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16),
            Kind::Any => t.supported(),
        }
    }
    fn allowed(self) -> String {
        match self {
            Kind::Float => "F32, F16, BF16".into(),
            Kind::Any => GgmlType::supported_list(),
        }
    }
}

/// Loads tensors by name, checking shape and dtype, reporting progress per tensor.
struct Loader<'a> {
    file: &'a GgufFile,
    on_tensor: &'a mut dyn FnMut(&str),
}

impl Loader<'_> {
    fn load(&mut self, name: &str, shape: &[usize], kind: Kind) -> Result<HostTensor, ModelError> {
        let t = self.file.tensor(name)?;
        let expected: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if t.shape() != expected.as_slice() {
            return Err(ModelError::ShapeMismatch {
                tensor: name.to_string(),
                expected,
                found: t.shape().to_vec(),
            });
        }
        if !t.dtype().supported() {
            return Err(GgufError::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: t.dtype(),
            }
            .into());
        }
        if !kind.allows(t.dtype()) {
            return Err(ModelError::DtypeMismatch {
                tensor: name.to_string(),
                dtype: t.dtype(),
                allowed: kind.allowed(),
            });
        }
        (self.on_tensor)(name);
        Ok(HostTensor {
            name: name.to_string(),
            dtype: t.dtype(),
            shape: shape.to_vec(),
            data: t.dequantize_f32()?,
        })
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<HostTensor, ModelError> {
        self.load(name, &[len], Kind::Float)
    }

    /// A GGUF {cols, rows} matrix: `rows` outputs of `cols` inputs.
    fn matrix(&mut self, name: &str, cols: usize, rows: usize) -> Result<HostTensor, ModelError> {
        self.load(name, &[cols, rows], Kind::Any)
    }

    fn experts(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
        n: usize,
    ) -> Result<HostTensor, ModelError> {
        self.load(name, &[cols, rows, n], Kind::Any)
    }
}

impl Weights {
    pub fn load(file: &GgufFile, cfg: &ModelConfig) -> Result<Self, ModelError> {
        Self::load_with_progress(file, cfg, &mut |_| {})
    }

    /// Like `load`, calling `on_tensor(name)` before each tensor is dequantized.
    pub fn load_with_progress(
        file: &GgufFile,
        cfg: &ModelConfig,
        on_tensor: &mut dyn FnMut(&str),
    ) -> Result<Self, ModelError> {
        let unsupported: Vec<(String, GgmlType)> = file
            .tensor_infos()
            .iter()
            .filter(|t| !t.dtype.supported())
            .map(|t| (t.name.clone(), t.dtype))
            .collect();
        if !unsupported.is_empty() {
            return Err(ModelError::UnsupportedTypes(unsupported));
        }
        let mut l = Loader { file, on_tensor };
        let (h, v) = (cfg.hidden, cfg.vocab);
        let token_embd = l.matrix("token_embd.weight", h, v)?;
        let output_norm = l.vector("output_norm.weight", h)?;
        let output = if file.has_tensor("output.weight") {
            Some(l.matrix("output.weight", h, v)?)
        } else {
            None
        };
        let rope_freqs = if file.has_tensor("rope_freqs.weight") {
            let t = l.vector("rope_freqs.weight", cfg.head_dim / 2)?;
            if let Some((i, v)) = t
                .data
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v <= 0.0)
            {
                return Err(ModelError::BadConfig(format!(
                    "rope_freqs.weight[{i}] = {v} must be positive"
                )));
            }
            Some(t)
        } else {
            None
        };
        let layers = (0..cfg.n_layer)
            .map(|i| load_layer(&mut l, cfg, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Weights {
            token_embd,
            output_norm,
            output,
            rope_freqs,
            layers,
        })
    }

    /// The LM head matrix `[vocab][hidden]`: `output.weight`, or `token_embd` when tied.
    pub fn lm_head(&self) -> &HostTensor {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// RoPE's frequency per rotated pair `i < head_dim / 2`, in f64: `rope_base^(-2i/head_dim)`
    /// times the linear scale, divided by `rope_freqs[i]` when the file has it (the angle at
    /// position p is `p · freq[i]`, as llama.cpp's `ggml_rope_ext` with its `freq_factors`).
    pub fn rope_frequencies(&self, cfg: &ModelConfig) -> Vec<f64> {
        let base = f64::from(cfg.rope_base);
        let scale = f64::from(cfg.rope_freq_scale);
        (0..cfg.head_dim / 2)
            .map(|i| {
                let f = base.powf(-2.0 * i as f64 / cfg.head_dim as f64) * scale;
                match &self.rope_freqs {
                    Some(t) => f / f64::from(t.data[i]),
                    None => f,
                }
            })
            .collect()
    }

    /// Every tensor, in a fixed order (for the GPU upload and for tests).
    pub fn tensors(&self) -> Vec<&HostTensor> {
        let mut out = vec![&self.token_embd, &self.output_norm];
        out.extend(&self.output);
        out.extend(&self.rope_freqs);
        for l in &self.layers {
            out.extend([&l.attn_norm, &l.wq, &l.wk, &l.wv]);
            out.extend(
                [&l.bq, &l.bk, &l.bv, &l.q_norm, &l.k_norm]
                    .into_iter()
                    .flatten(),
            );
            out.extend([&l.wo, &l.ffn_norm]);
            match &l.ffn {
                Ffn::Dense { gate, up, down } => out.extend([gate, up, down]),
                Ffn::Moe {
                    router,
                    gate_exps,
                    up_exps,
                    down_exps,
                    shared,
                } => {
                    out.extend([router, gate_exps, up_exps, down_exps]);
                    if let Some(s) = shared {
                        out.extend([&s.gate_inp, &s.gate, &s.up, &s.down]);
                    }
                }
            }
        }
        out
    }
}

fn load_layer(l: &mut Loader, cfg: &ModelConfig, i: usize) -> Result<LayerWeights, ModelError> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let (h, q, kv, hd) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let bias = |l: &mut Loader, s: &str, len| -> Result<Option<HostTensor>, ModelError> {
        if cfg.qkv_bias {
            l.vector(&n(s), len).map(Some)
        } else {
            Ok(None)
        }
    };
    let qk_norm = |l: &mut Loader, s: &str| -> Result<Option<HostTensor>, ModelError> {
        if cfg.qk_norm {
            l.vector(&n(s), hd).map(Some)
        } else {
            Ok(None)
        }
    };
    let attn_norm = l.vector(&n("attn_norm.weight"), h)?;
    let wq = l.matrix(&n("attn_q.weight"), h, q)?;
    let wk = l.matrix(&n("attn_k.weight"), h, kv)?;
    let wv = l.matrix(&n("attn_v.weight"), h, kv)?;
    let bq = bias(l, "attn_q.bias", q)?;
    let bk = bias(l, "attn_k.bias", kv)?;
    let bv = bias(l, "attn_v.bias", kv)?;
    let q_norm = qk_norm(l, "attn_q_norm.weight")?;
    let k_norm = qk_norm(l, "attn_k_norm.weight")?;
    let wo = l.matrix(&n("attn_output.weight"), q, h)?;
    let ffn_norm = l.vector(&n("ffn_norm.weight"), h)?;
    let ffn = if cfg.arch.is_moe() {
        let (e, fe) = (cfg.n_expert, cfg.ff_exp);
        let router = l.load(&n("ffn_gate_inp.weight"), &[h, e], Kind::Float)?;
        let gate_exps = l.experts(&n("ffn_gate_exps.weight"), h, fe, e)?;
        let up_exps = l.experts(&n("ffn_up_exps.weight"), h, fe, e)?;
        let down_exps = l.experts(&n("ffn_down_exps.weight"), fe, h, e)?;
        let shared = if cfg.arch.shared_expert() {
            let fs = cfg.ff_shexp;
            Some(SharedExpert {
                gate_inp: l.vector(&n("ffn_gate_inp_shexp.weight"), h)?,
                gate: l.matrix(&n("ffn_gate_shexp.weight"), h, fs)?,
                up: l.matrix(&n("ffn_up_shexp.weight"), h, fs)?,
                down: l.matrix(&n("ffn_down_shexp.weight"), fs, h)?,
            })
        } else {
            None
        };
        Ffn::Moe {
            router,
            gate_exps,
            up_exps,
            down_exps,
            shared,
        }
    } else {
        Ffn::Dense {
            gate: l.matrix(&n("ffn_gate.weight"), h, cfg.ff)?,
            up: l.matrix(&n("ffn_up.weight"), h, cfg.ff)?,
            down: l.matrix(&n("ffn_down.weight"), cfg.ff, h)?,
        }
    };
    Ok(LayerWeights {
        attn_norm,
        wq,
        wk,
        wv,
        bq,
        bk,
        bv,
        q_norm,
        k_norm,
        wo,
        ffn_norm,
        ffn,
    })
}
