//! `kiln synth`: write a synthetic model with seeded random weights.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, anyhow};
use clap::Args;

use super::output::{PendingOutput, Progress, outln};
use crate::gguf::GgmlType;
use crate::model::Arch;
use crate::synth::{self, Preset, SynthSpec};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// qwen3, qwen3moe, qwen2moe, llama or qwen2.
    #[arg(long, default_value = "qwen3moe")]
    pub arch: String,
    /// tiny (the fixture dims), tiny-hd64 (head_dim 64) or qwen3-30b-a3b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// F32, F16, BF16 or Q8_0.
    #[arg(long, default_value = "F32")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file; an existing file is replaced only with --force.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let spec = SynthSpec {
        arch: Arch::parse(&args.arch).ok_or_else(|| {
            anyhow!(
                "unknown architecture {:?} (qwen3, qwen3moe, qwen2moe)",
                args.arch
            )
        })?,
        preset: Preset::parse(&args.preset).ok_or_else(|| {
            anyhow!(
                "unknown preset {:?} (tiny, tiny-hd64, qwen3-30b-a3b)",
                args.preset
            )
        })?,
        n_layer: args.layers,
        dtype: GgmlType::parse(&args.dtype)
            .ok_or_else(|| anyhow!("unknown dtype {:?} (F32, F16, BF16, Q8_0)", args.dtype))?,
        seed: args.seed,
    };
    let writer = synth::build_writer(&spec)?;
    let len = writer.file_len();
    let mut out = PendingOutput::create(&args.output, "output file", args.force, "--force")?;
    let start = Instant::now();
    let progress = Progress::new("synth", writer.tensors().len() as u64, "tensors");
    synth::write(&spec, out.file(), &mut |_, _, name| progress.inc(1, name))
        .with_context(|| format!("writing {}", args.output.display()))?;
    progress.finish();
    out.commit()?;
    outln!(
        "wrote {} ({} {} {} layers {}, seed {}, {:.1} MB, {:.1} s)",
        args.output.display(),
        spec.preset.name(),
        spec.arch,
        spec.n_layer,
        spec.dtype,
        spec.seed,
        len as f64 / 1e6,
        start.elapsed().as_secs_f64()
    )
}
