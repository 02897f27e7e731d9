//! Subcommands of the `kiln` binary, one per file. Library code returns typed errors; here
//! they gain context with `anyhow` and `main` prints them on one line.

pub mod bench;
pub mod info;
pub mod prefill;
pub mod synth;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::gguf::GgufFile;

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "Batch-invariant GGUF prompt prefill")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure GPU prefill throughput on synthetic models (see docs/bench.md).
    Bench(bench::BenchArgs),
    /// Print a GGUF file's architecture, dims and tensor table.
    Info(info::InfoArgs),
    /// Run a prompt through the model and print the next-token candidates.
    Prefill(prefill::PrefillArgs),
    /// Write a synthetic model with seeded random weights.
    Synth(synth::SynthArgs),
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(a) => bench::run(&a),
        Command::Info(a) => info::run(&a),
        Command::Prefill(a) => prefill::run(&a),
        Command::Synth(a) => synth::run(&a),
    }
}

pub(crate) fn open_gguf(path: &std::path::Path) -> anyhow::Result<GgufFile> {
    GgufFile::open(path).with_context(|| format!("reading {}", path.display()))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_prefix(what.to_string());
    pb
}
