//! `kiln prefill`: run a prompt and print the top next tokens.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};

use crate::gguf::GgufFile;
use crate::model::{ModelConfig, Weights};
use crate::npy;
use crate::reference;
use crate::synth;
use crate::tokenizer::Tokenizer;

const DEFAULT_PROMPT: &str = "The quick brown fox jumps over the lazy dog.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Auto,
}

/// What actually runs the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    CpuReference,
}

#[derive(Args, Debug)]
pub struct PrefillArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// GGUF model (default: the embedded synthetic tiny qwen3moe).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Prompt text.
    #[arg(short, long, conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// Compute logits for every position, not just the last.
    #[arg(long)]
    pub all_logits: bool,
    /// Write the logits as float32 .npy ([vocab], or [n, vocab] with --all-logits).
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
}

/// The one place the device is chosen. `auto` runs on the CPU until the GPU path lands.
pub fn select_backend(device: DeviceArg) -> Backend {
    match device {
        DeviceArg::Cpu => Backend::CpuReference,
        DeviceArg::Auto => {
            println!("device: auto -> cpu (CPU reference; the GPU path is not wired in yet)");
            Backend::CpuReference
        }
    }
}

pub fn run(args: &PrefillArgs) -> anyhow::Result<()> {
    let backend = select_backend(args.device);
    let (file, label) = match &args.model {
        Some(p) => (super::open_gguf(p)?, p.display().to_string()),
        None => (
            synth::default_model().context("building the embedded default model")?,
            "embedded default (synthetic tiny qwen3moe, 2 layers, BF16)".to_string(),
        ),
    };
    println!("model: {label}");
    let cfg = ModelConfig::from_gguf(&file).with_context(|| format!("reading model {label}"))?;
    let tokenizer = Tokenizer::from_gguf(&file);
    let tokens = prompt_tokens(args, &tokenizer)?;
    check_prompt(&tokens, &cfg)?;
    let weights =
        load_weights(&file, &cfg).with_context(|| format!("loading weights of {label}"))?;

    let start = Instant::now();
    let logits = match backend {
        Backend::CpuReference => reference::forward(&cfg, &weights, &tokens, args.all_logits)?,
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "prompt: {} tokens, {:.3} s, {:.1} tokens/s",
        tokens.len(),
        secs,
        tokens.len() as f64 / secs.max(1e-9)
    );
    println!("top-5 next tokens:");
    let last = logits.last();
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    for &id in order.iter().take(5) {
        let text = match &tokenizer {
            Ok(t) => format!("{:?}", t.decode_token(id as u32)),
            Err(_) => "?".into(),
        };
        println!("  {id:>7}  {:>10.4}  {text}", last[id]);
    }
    if let Some(path) = &args.dump_logits {
        let shape = if args.all_logits {
            vec![logits.n_rows(), logits.vocab]
        } else {
            vec![logits.vocab]
        };
        npy::write_f32(path, &shape, &logits.data)?;
        println!("logits written to {}", path.display());
    }
    Ok(())
}

fn prompt_tokens(
    args: &PrefillArgs,
    tokenizer: &Result<Tokenizer, crate::tokenizer::TokenizerError>,
) -> anyhow::Result<Vec<u32>> {
    if let Some(t) = &args.tokens {
        return Ok(t.clone());
    }
    let text = args.prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
    let tok = tokenizer
        .as_ref()
        .map_err(|e| anyhow!("cannot tokenize the prompt text: {e}"))?;
    tok.encode(text)
        .with_context(|| format!("tokenizing {text:?}"))
}

/// Rejects prompts the model cannot take before any weight is loaded.
fn check_prompt(tokens: &[u32], cfg: &ModelConfig) -> anyhow::Result<()> {
    if tokens.is_empty() {
        bail!("the prompt is empty");
    }
    if tokens.len() > cfg.ctx {
        bail!(
            "prompt of {} tokens exceeds the context length (ctx = {})",
            tokens.len(),
            cfg.ctx
        );
    }
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= cfg.vocab)
    {
        bail!(
            "token {t} at prompt index {i} is out of range (vocab = {})",
            cfg.vocab
        );
    }
    Ok(())
}

fn load_weights(file: &GgufFile, cfg: &ModelConfig) -> anyhow::Result<Weights> {
    let pb = super::progress_bar(file.tensor_infos().len() as u64, "load");
    let w = Weights::load_with_progress(file, cfg, &mut |name| {
        pb.inc(1);
        pb.set_message(name.to_string());
    })?;
    pb.finish_and_clear();
    Ok(w)
}
