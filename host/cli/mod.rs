//! Subcommands of the `kiln` binary, one per file. Library code returns typed errors; here
//! they gain context with `anyhow` and `main` prints them on one line.

pub mod bench;
pub mod generate;
pub mod info;
pub mod output;
pub mod prefill;
pub mod synth;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::gguf::GgufFile;

pub use output::StdoutClosed;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Batch-invariant GGUF prompt prefill and generation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure GPU prefill throughput on synthetic models (see docs/bench.md).
    Bench(bench::BenchArgs),
    /// Prefill a prompt, then generate a continuation token by token, streaming the text.
    Generate(generate::GenerateArgs),
    /// Print a GGUF file's architecture, dims and tensor table.
    Info(info::InfoArgs),
    /// Run a prompt through the model and print the next-token candidates.
    Prefill(prefill::PrefillArgs),
    /// Write a synthetic model with seeded random weights.
    Synth(synth::SynthArgs),
}

/// The device words every subcommand takes (`--device`); each says which it can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The CUDA GPU if one is usable, else the subcommand's CPU stand-in (saying so once).
    Auto,
    /// The CUDA GPU; an error if there is none.
    #[value(alias = "gpu")]
    Cuda,
    /// The plain-Rust CPU reference forward (prefill and generate).
    Cpu,
    /// The GPU pipeline on the CPU emulator (slow: for tests and smoke runs).
    Emulator,
}

/// A command line clap rejected: `main` prints it on one line and exits with clap's status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn run() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    match cli.command {
        Command::Bench(a) => bench::run(&a),
        Command::Generate(a) => generate::run(&a),
        Command::Info(a) => info::run(&a),
        Command::Prefill(a) => prefill::run(&a),
        Command::Synth(a) => synth::run(&a),
    }
}

/// Help and version go to their stream as clap writes them; a usage error becomes one line:
/// clap's first paragraph (what is wrong, with the argument it concerns), without the usage
/// block and tips that follow it.
fn usage(e: clap::Error) -> anyhow::Result<()> {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // A closed stdout (`kiln --help | head -1`) is not worth a complaint.
            let _ = e.print();
            Ok(())
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Err(UsageError("a subcommand is required (see kiln --help)".into()).into())
        }
        _ => {
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let msg = first.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            Err(UsageError(format!("{msg} (see --help)")).into())
        }
    }
}

pub(crate) fn open_gguf(path: &std::path::Path) -> anyhow::Result<GgufFile> {
    GgufFile::open(path).with_context(|| format!("reading {}", path.display()))
}
