//! `kiln prefill`: run a prompt and print the top next tokens.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};

use crate::gguf::GgufFile;
use crate::gpu::Device;
use crate::model::{ModelConfig, Weights};
use crate::npy;
use crate::pipeline::{GpuModel, PrefillOptions, prefill};
use crate::reference;
use crate::synth;
use crate::tokenizer::Tokenizer;

const DEFAULT_PROMPT: &str = "The quick brown fox jumps over the lazy dog.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The GPU if one is usable, else the CPU reference (saying so).
    Auto,
    /// The CUDA GPU; an error if there is none.
    Gpu,
    /// The plain-Rust CPU reference forward.
    Cpu,
    /// The GPU pipeline on the CPU emulator (very slow; for tests of the pipeline itself).
    Emulator,
}

/// What actually runs the forward pass.
pub enum Backend {
    CpuReference,
    Pipeline(Device),
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
    /// Tokens per chunk on the GPU (default: the whole prompt at once).
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Also run the prompt token by token on the GPU and report whether the final logits are
    /// bit-identical to the batched run.
    #[arg(long)]
    pub check: bool,
    /// Removed: attention is one fused kernel now and needs no score scratch. Kept only so
    /// that passing it says so instead of "unexpected argument".
    #[arg(long, hide = true)]
    pub wave_budget_mib: Option<usize>,
    /// Compute logits for every position, not just the last.
    #[arg(long)]
    pub all_logits: bool,
    /// Write the logits as float32 .npy ([vocab], or [n, vocab] with --all-logits).
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
}

/// The one place the device is chosen.
pub fn select_backend(device: DeviceArg) -> anyhow::Result<Backend> {
    Ok(match device {
        DeviceArg::Cpu => Backend::CpuReference,
        DeviceArg::Emulator => Backend::Pipeline(Device::emulator()),
        DeviceArg::Gpu => Backend::Pipeline(Device::cuda().context("--device gpu")?),
        DeviceArg::Auto => match Device::cuda() {
            Ok(dev) => Backend::Pipeline(dev),
            Err(e) => {
                println!("device: no usable GPU ({e}); running on the CPU reference");
                Backend::CpuReference
            }
        },
    })
}

pub fn run(args: &PrefillArgs) -> anyhow::Result<()> {
    if args.wave_budget_mib.is_some() {
        anyhow::bail!(
            "--wave-budget-mib was removed: attention is one fused flash-attention kernel and \
             uses no score scratch; drop the option"
        );
    }
    let backend = select_backend(args.device)?;
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

    let (logits, secs) = match &backend {
        Backend::CpuReference => {
            println!("device: CPU reference (f64 accumulation)");
            let start = Instant::now();
            let l = reference::forward(&cfg, &weights, &tokens, args.all_logits)?;
            (l.data, start.elapsed().as_secs_f64())
        }
        Backend::Pipeline(dev) => run_pipeline(args, dev, &cfg, &weights, &tokens)?,
    };
    println!(
        "prompt: {} tokens, {:.3} s, {:.1} tokens/s",
        tokens.len(),
        secs,
        tokens.len() as f64 / secs.max(1e-9)
    );
    println!("top-5 next tokens:");
    let last = &logits[logits.len() - cfg.vocab..];
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
            vec![logits.len() / cfg.vocab, cfg.vocab]
        } else {
            vec![cfg.vocab]
        };
        npy::write_f32(path, &shape, &logits)?;
        println!("logits written to {}", path.display());
    }
    Ok(())
}

/// Uploads the weights and prefills on `dev`; with `--check`, also token by token, comparing
/// the final logits bit for bit. Returns the logits and the prefill time (upload excluded).
fn run_pipeline(
    args: &PrefillArgs,
    dev: &Device,
    cfg: &ModelConfig,
    weights: &Weights,
    tokens: &[u32],
) -> anyhow::Result<(Vec<f32>, f64)> {
    println!("device: {}", dev.name());
    let model = GpuModel::upload(dev, cfg, weights, true).context("uploading weights")?;
    let opts = PrefillOptions {
        chunk: args.chunk,
        all_logits: args.all_logits,
        profile: false,
    };
    // The first launch of each kernel pays for module setup; a one-token warm-up keeps that
    // out of the timed prefill.
    prefill(&model, dev, &tokens[..1], &PrefillOptions::default()).context("warm-up")?;
    let start = Instant::now();
    let out = prefill(&model, dev, tokens, &opts).context("prefill")?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "chunks: {} ({} tokens max), {} kernel launches",
        out.chunks.len(),
        out.chunks.iter().max().copied().unwrap_or(0),
        out.launches,
    );
    if args.check {
        let seq_opts = PrefillOptions {
            chunk: Some(1),
            all_logits: false,
            ..opts.clone()
        };
        let seq = prefill(&model, dev, tokens, &seq_opts).context("sequential check")?;
        let last = &out.logits[out.logits.len() - cfg.vocab..];
        let same = seq
            .logits
            .iter()
            .zip(last)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            bail!(
                "--check: token-by-token logits differ from the batched run ({} vs {} chunks)",
                seq.chunks.len(),
                out.chunks.len()
            );
        }
        println!(
            "check: token-by-token ({} chunks) and batched final logits are bit-identical",
            seq.chunks.len()
        );
    }
    Ok((out.logits, secs))
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
