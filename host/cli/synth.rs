//! `kiln synth`: write a synthetic model with seeded random weights.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;

use crate::gguf::GgmlType;
use crate::model::Arch;
use crate::synth::{self, Preset, SynthSpec};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// qwen3, qwen3moe or qwen2moe.
    #[arg(long, default_value = "qwen3moe")]
    pub arch: String,
    /// tiny (the fixture dims) or qwen3-30b-a3b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// F32, F16, BF16 or Q8_0.
    #[arg(long, default_value = "F32")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let spec = SynthSpec {
        arch: Arch::parse(&args.arch).ok_or_else(|| {
            anyhow!(
                "unknown architecture {:?} (qwen3, qwen3moe, qwen2moe)",
                args.arch
            )
        })?,
        preset: Preset::parse(&args.preset)
            .ok_or_else(|| anyhow!("unknown preset {:?} (tiny, qwen3-30b-a3b)", args.preset))?,
        n_layer: args.layers,
        dtype: GgmlType::parse(&args.dtype)
            .ok_or_else(|| anyhow!("unknown dtype {:?} (F32, F16, BF16, Q8_0)", args.dtype))?,
        seed: args.seed,
    };
    let writer = synth::build_writer(&spec)?;
    let len = writer.file_len();
    let pb = super::progress_bar(writer.tensors().len() as u64, "synth");
    synth::write_file(&spec, &args.output, &mut |i, _, name| {
        pb.set_position(i as u64);
        pb.set_message(name.to_string());
    })
    .with_context(|| format!("writing {}", args.output.display()))?;
    pb.finish_and_clear();
    println!(
        "wrote {} ({} {} {} layers {}, seed {}, {:.1} MB)",
        args.output.display(),
        spec.preset.name(),
        spec.arch,
        spec.n_layer,
        spec.dtype,
        spec.seed,
        len as f64 / 1e6
    );
    Ok(())
}
