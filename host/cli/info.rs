//! `kiln info FILE`: architecture, dims and the tensor table.
//!
//! A file kiln cannot run (an unknown architecture, tensors of types kiln does not dequantize)
//! is still described: the header, metadata and tensor table come from the GGUF layout alone,
//! and what kiln cannot do is said after them.

use std::path::PathBuf;

use clap::Args;

use super::output::outln;
use crate::gguf::GgufFile;
use crate::model::ModelConfig;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// GGUF file to describe.
    pub file: PathBuf,
    /// Also print every metadata key.
    #[arg(long)]
    pub metadata: bool,
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let f = super::open_gguf(&args.file)?;
    outln!("file:      {}", args.file.display())?;
    outln!(
        "gguf:      v{}, {} metadata keys, {} tensors, alignment {}, data at {}",
        f.version(),
        f.metadata().len(),
        f.tensor_infos().len(),
        f.alignment(),
        f.data_offset()
    )?;
    // The model config is what kiln would run; a file it cannot run is still listed below.
    let config = ModelConfig::from_gguf(&f);
    if let Ok(cfg) = &config {
        print_config(cfg)?;
        let has = |name| f.has_tensor(name);
        outln!(
            "rope:      {:?}, scale {}, frequency factors {}, lm head {}",
            cfg.rope,
            cfg.rope_freq_scale,
            if has("rope_freqs.weight") {
                "rope_freqs.weight"
            } else {
                "none"
            },
            if has("output.weight") {
                "output.weight"
            } else {
                "token_embd.weight (tied)"
            }
        )?;
    }
    if args.metadata {
        outln!("\nmetadata:")?;
        for (k, v) in f.metadata() {
            outln!("  {k:<48} {}", v.summary())?;
        }
    }
    print_tensors(&f)?;
    let unsupported: Vec<String> = f
        .tensor_infos()
        .iter()
        .filter(|t| !t.dtype.supported())
        .map(|t| format!("{} ({})", t.name, t.dtype))
        .collect();
    if !unsupported.is_empty() {
        outln!(
            "\nkiln cannot run {} tensor(s) of this file, of types it does not dequantize \
             (it runs {}): {}",
            unsupported.len(),
            crate::gguf::GgmlType::supported_list(),
            unsupported.join(", ")
        )?;
    }
    if let Err(e) = config {
        outln!("\nkiln cannot run this file: {e}")?;
    }
    Ok(())
}

fn print_config(cfg: &ModelConfig) -> anyhow::Result<()> {
    outln!("arch:      {}", cfg.arch)?;
    outln!(
        "dims:      layers {}, hidden {}, heads {} (kv {}) x {}, vocab {}, ctx {}",
        cfg.n_layer,
        cfg.hidden,
        cfg.n_head,
        cfg.n_head_kv,
        cfg.head_dim,
        cfg.vocab,
        cfg.ctx
    )?;
    if cfg.arch.is_moe() {
        outln!(
            "experts:   {} (top {}) x ff {}, shared ff {}, renormalise top-k {}",
            cfg.n_expert,
            cfg.n_expert_used,
            cfg.ff_exp,
            cfg.ff_shexp,
            cfg.norm_topk
        )?;
    } else {
        outln!("ffn:       dense, ff {}", cfg.ff)?;
    }
    outln!(
        "rope base: {}, rms eps: {:e}, qk-norm {}, qkv bias {}",
        cfg.rope_base,
        cfg.eps,
        cfg.qk_norm,
        cfg.qkv_bias
    )
}

fn print_tensors(f: &GgufFile) -> anyhow::Result<()> {
    outln!(
        "\n{:<36} {:<7} {:<20} {:>12}",
        "tensor",
        "dtype",
        "shape (ne)",
        "bytes"
    )?;
    let mut total = 0u64;
    for t in f.tensor_infos() {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        outln!(
            "{:<36} {:<7} {:<20} {:>12}",
            t.name,
            t.dtype.name(),
            format!("[{}]", shape.join(", ")),
            t.n_bytes
        )?;
        total += t.n_bytes;
    }
    outln!("{:<65} {:>12}", "total", total)
}
