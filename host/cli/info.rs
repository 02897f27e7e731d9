//! `kiln info FILE`: architecture, dims and the tensor table.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

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
    let cfg = ModelConfig::from_gguf(&f)
        .with_context(|| format!("reading the model config of {}", args.file.display()))?;
    println!("file:      {}", args.file.display());
    println!(
        "gguf:      v{}, {} metadata keys, {} tensors, alignment {}, data at {}",
        f.version(),
        f.metadata().len(),
        f.tensor_infos().len(),
        f.alignment(),
        f.data_offset()
    );
    println!("arch:      {}", cfg.arch);
    println!(
        "dims:      layers {}, hidden {}, heads {} (kv {}) x {}, vocab {}, ctx {}",
        cfg.n_layer, cfg.hidden, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.vocab, cfg.ctx
    );
    if cfg.arch.is_moe() {
        println!(
            "experts:   {} (top {}) x ff {}, shared ff {}, renormalise top-k {}",
            cfg.n_expert, cfg.n_expert_used, cfg.ff_exp, cfg.ff_shexp, cfg.norm_topk
        );
    } else {
        println!("ffn:       dense, ff {}", cfg.ff);
    }
    println!(
        "rope:      {:?}, base {}, scale {}, frequency factors {}",
        cfg.rope,
        cfg.rope_base,
        cfg.rope_freq_scale,
        if f.has_tensor("rope_freqs.weight") {
            "rope_freqs.weight"
        } else {
            "none"
        }
    );
    println!(
        "rms eps:   {:e}, qk-norm {}, qkv bias {}, lm head {}",
        cfg.eps,
        cfg.qk_norm,
        cfg.qkv_bias,
        if f.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight (tied)"
        }
    );
    if args.metadata {
        println!("\nmetadata:");
        for (k, v) in f.metadata() {
            println!("  {k:<48} {}", v.summary());
        }
    }
    println!(
        "\n{:<36} {:<6} {:<20} {:>12}",
        "tensor", "dtype", "shape (ne)", "bytes"
    );
    let mut total = 0u64;
    for t in f.tensor_infos() {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "{:<36} {:<6} {:<20} {:>12}",
            t.name,
            t.dtype.name(),
            format!("[{}]", shape.join(", ")),
            t.n_bytes
        );
        total += t.n_bytes;
    }
    println!("{:<64} {:>12}", "total", total);
    Ok(())
}
