//! `kiln prefill`: run a prompt and print the top next tokens.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::Args;

use super::DeviceArg;
use super::output::{PendingOutput, Progress, outln};
use crate::gguf::GgufFile;
use crate::gpu::Device;
use crate::model::{ModelConfig, Weights};
use crate::npy;
use crate::pipeline::{GpuModel, PrefillOptions, prefill};
use crate::reference;
use crate::synth;
use crate::tokenizer::Tokenizer;

const DEFAULT_PROMPT: &str = "The quick brown fox jumps over the lazy dog.";

/// What actually runs the forward pass.
pub enum Backend {
    CpuReference,
    Pipeline(Device),
}

/// The device, model and prompt options `prefill` and `generate` share.
#[derive(Args, Debug)]
pub struct ModelPrompt {
    /// auto (the GPU if usable, else the CPU reference), cuda (alias gpu), cpu, or emulator
    /// (the GPU pipeline on the CPU emulator: slow, for debugging).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// GGUF model (default: the embedded synthetic tiny qwen3moe).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Prompt text (with `generate --chat`: the user's message).
    #[arg(short, long, conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Prompt token ids, separated by commas and/or spaces ("1,2,3" or "1, 2, 3").
    #[arg(long, value_name = "IDS", allow_hyphen_values = true, value_parser = parse_token_ids)]
    pub tokens: Option<TokenIds>,
}

impl ModelPrompt {
    /// The model file (`--model`, else the embedded default) and how to name it.
    pub fn open_model(&self) -> anyhow::Result<(GgufFile, String)> {
        Ok(match &self.model {
            Some(p) => (super::open_gguf(p)?, p.display().to_string()),
            None => (
                synth::default_model().context("building the embedded default model")?,
                "embedded default (synthetic tiny qwen3moe, 2 layers, BF16)".to_string(),
            ),
        })
    }
}

#[derive(Args, Debug)]
pub struct PrefillArgs {
    #[command(flatten)]
    pub input: ModelPrompt,
    /// Tokens per chunk on the GPU pipeline, at least 1 (default: the whole prompt at once).
    #[arg(long, value_parser = parse_chunk)]
    pub chunk: Option<usize>,
    /// Also run the prompt token by token on the GPU pipeline and fail unless the final logits
    /// are bit-identical to the batched run's.
    #[arg(long)]
    pub check: bool,
    /// Removed: attention is one fused kernel now and needs no score scratch. Kept only so
    /// that passing it says so instead of "unexpected argument".
    #[arg(long, hide = true)]
    pub wave_budget_mib: Option<String>,
    /// With --dump-logits: write the logits of every position, not just the last.
    #[arg(long)]
    pub all_logits: bool,
    /// Write the logits as float32 .npy ([vocab], or [n, vocab] with --all-logits).
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
}

/// Prompt token ids as given on the command line.
#[derive(Clone, Debug)]
pub struct TokenIds(pub Vec<u32>);

/// `--tokens`: ids separated by commas and/or whitespace; each a non-negative integer.
pub(super) fn parse_token_ids(s: &str) -> Result<TokenIds, String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| format!("{t:?} is not a token id (a non-negative integer)"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(TokenIds)
}

pub(super) fn parse_chunk(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("a chunk holds at least 1 token".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a positive integer")),
    }
}

/// The one place the device is chosen. `pipeline_only` names an option that needs the GPU
/// pipeline, so that `auto` without a GPU fails instead of ignoring it.
/// `say` writes the one `device:` line `auto` gives when it falls back (stdout for prefill,
/// stderr for generate, whose stdout is the text).
pub fn select_backend(
    device: DeviceArg,
    pipeline_only: Option<&str>,
    say: &dyn Fn(std::fmt::Arguments) -> anyhow::Result<()>,
) -> anyhow::Result<Backend> {
    Ok(match device {
        DeviceArg::Cpu => {
            if let Some(opt) = pipeline_only {
                bail!(
                    "{opt} applies to the GPU pipeline, and --device cpu runs the CPU reference \
                     (one pass, no chunks); use --device cuda, or --device emulator without a GPU"
                );
            }
            Backend::CpuReference
        }
        DeviceArg::Emulator => Backend::Pipeline(Device::emulator()),
        DeviceArg::Cuda => Backend::Pipeline(Device::cuda().map_err(|e| {
            anyhow!(
                "--device cuda: {e}; --device cpu runs the CPU reference, --device emulator \
                 the GPU pipeline on the CPU"
            )
        })?),
        DeviceArg::Auto => match Device::cuda() {
            Ok(dev) => Backend::Pipeline(dev),
            Err(e) => {
                if let Some(opt) = pipeline_only {
                    bail!(
                        "{opt} applies to the GPU pipeline, and --device auto found no usable \
                         GPU ({e}); use --device emulator to run the pipeline on the CPU"
                    );
                }
                say(format_args!(
                    "device: CPU reference (f64 accumulation), since {e}"
                ))?;
                Backend::CpuReference
            }
        },
    })
}

pub fn run(args: &PrefillArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.wave_budget_mib.is_some() {
        bail!(
            "--wave-budget-mib was removed: attention is one fused flash-attention kernel and \
             uses no score scratch; drop the option"
        );
    }
    if args.all_logits && args.dump_logits.is_none() {
        bail!(
            "--all-logits only changes what --dump-logits writes (every position's logits); \
             add --dump-logits FILE.npy"
        );
    }
    // Every output is checked (and its temporary created) before any work.
    let mut dump = args
        .dump_logits
        .as_deref()
        .map(|p| PendingOutput::create(p, "--dump-logits", true, ""))
        .transpose()?;
    let pipeline_only = if args.check {
        Some("--check")
    } else if args.chunk.is_some() {
        Some("--chunk")
    } else {
        None
    };
    let (file, label) = args.input.open_model()?;
    outln!("model: {label}")?;
    let cfg = ModelConfig::from_gguf(&file).with_context(|| format!("reading model {label}"))?;
    let tokenizer = Tokenizer::from_gguf(&file);
    let tokens = prompt_tokens(
        args.input.tokens.as_ref(),
        args.input.prompt.as_deref(),
        &tokenizer,
    )?;
    check_prompt(&tokens, &cfg)?;
    let backend = select_backend(args.input.device, pipeline_only, &super::output::line)?;
    let t = Instant::now();
    let weights =
        load_weights(&file, &cfg).with_context(|| format!("loading weights of {label}"))?;
    let load_s = t.elapsed().as_secs_f64();
    outln!(
        "load: {load_s:.3} s (read and convert {} tensors to f32 on the host)",
        weights.tensors().len()
    )?;

    let mut times = vec![("load", load_s)];
    let logits = match &backend {
        Backend::CpuReference => {
            if !matches!(args.input.device, DeviceArg::Auto) {
                outln!("device: CPU reference (f64 accumulation)")?;
            }
            let start = Instant::now();
            let l = reference::forward(&cfg, &weights, &tokens, args.all_logits)?;
            let secs = start.elapsed().as_secs_f64();
            print_rate(tokens.len(), secs)?;
            times.push(("prefill", secs));
            l.data
        }
        Backend::Pipeline(dev) => run_pipeline(args, dev, &cfg, &weights, &tokens, &mut times)?,
    };
    let parts: Vec<String> = times
        .iter()
        .map(|(what, s)| format!("{what} {s:.3} s"))
        .collect();
    outln!(
        "time: {:.3} s in all ({})",
        started.elapsed().as_secs_f64(),
        parts.join(", ")
    )?;
    outln!("top-5 next tokens:")?;
    let last = &logits[logits.len() - cfg.vocab..];
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    for &id in order.iter().take(5) {
        let text = match &tokenizer {
            Ok(t) => t.display_token(id as u32),
            Err(_) => "?".into(),
        };
        outln!("  {id:>7}  {:>10.4}  {text}", last[id])?;
    }
    if let Some(mut out) = dump.take() {
        let shape = if args.all_logits {
            vec![logits.len() / cfg.vocab, cfg.vocab]
        } else {
            vec![cfg.vocab]
        };
        let bytes = npy::to_bytes_f32(&shape, &logits);
        std::io::Write::write_all(out.file(), &bytes)
            .with_context(|| format!("writing {}", out.path().display()))?;
        let path = out.path().to_path_buf();
        out.commit()?;
        outln!("logits written to {}", path.display())?;
    }
    Ok(())
}

fn print_rate(n: usize, secs: f64) -> anyhow::Result<()> {
    outln!(
        "prefill: {n} tokens, {secs:.3} s, {:.1} tokens/s",
        n as f64 / secs.max(1e-9)
    )
}

/// Uploads the weights and prefills on `dev`; with `--check`, also token by token, comparing
/// the final logits bit for bit. Records each phase's time in `times`.
fn run_pipeline(
    args: &PrefillArgs,
    dev: &Device,
    cfg: &ModelConfig,
    weights: &Weights,
    tokens: &[u32],
    times: &mut Vec<(&'static str, f64)>,
) -> anyhow::Result<Vec<f32>> {
    outln!("device: {}", dev.name())?;
    let t = Instant::now();
    let progress = Progress::new("upload", weights.tensors().len() as u64, "tensors");
    let model = GpuModel::upload(dev, cfg, weights, &|n| progress.inc(n, ""))
        .context("uploading weights")?;
    progress.finish();
    dev.synchronize()?;
    let upload_s = t.elapsed().as_secs_f64();
    outln!("upload: {upload_s:.3} s (weights to bf16/f32 device buffers)")?;
    times.push(("upload", upload_s));
    let opts = PrefillOptions {
        chunk: args.chunk,
        all_logits: args.all_logits,
        ..PrefillOptions::default()
    };
    // The first launch of each kernel pays for module setup; a one-token warm-up keeps that
    // out of the timed prefill.
    let t = Instant::now();
    prefill(&model, dev, &tokens[..1], &PrefillOptions::default()).context("warm-up")?;
    dev.synchronize()?;
    times.push(("warm-up", t.elapsed().as_secs_f64()));
    let start = Instant::now();
    let out = prefill(&model, dev, tokens, &opts).context("prefill")?;
    dev.synchronize()?;
    let secs = start.elapsed().as_secs_f64();
    times.push(("prefill", secs));
    print_rate(tokens.len(), secs)?;
    outln!(
        "chunks: {} ({} tokens max), {} kernel launches",
        out.chunks.len(),
        out.chunks.iter().max().copied().unwrap_or(0),
        out.launches,
    )?;
    if args.check {
        let t = Instant::now();
        let seq_opts = PrefillOptions {
            chunk: Some(1),
            all_logits: false,
            ..opts.clone()
        };
        let seq = prefill(&model, dev, tokens, &seq_opts).context("sequential check")?;
        times.push(("check", t.elapsed().as_secs_f64()));
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
        outln!(
            "check: token-by-token ({} chunks) and batched final logits are bit-identical",
            seq.chunks.len()
        )?;
    }
    Ok(out.logits)
}

/// The prompt's token ids: `--tokens` as given, else the text (`-p`, or the default prompt)
/// through the model's tokenizer.
pub(super) fn prompt_tokens(
    ids: Option<&TokenIds>,
    text: Option<&str>,
    tokenizer: &Result<Tokenizer, crate::tokenizer::TokenizerError>,
) -> anyhow::Result<Vec<u32>> {
    if let Some(t) = ids {
        return Ok(t.0.clone());
    }
    let text = text.unwrap_or(DEFAULT_PROMPT);
    let tok = tokenizer.as_ref().map_err(|e| {
        anyhow!(
            "cannot tokenize the prompt text: {e}; give the prompt as token ids instead \
             (--tokens 1,2,3)"
        )
    })?;
    for note in tok.notes() {
        super::output::note(format_args!("note: {note}"));
    }
    tok.encode_prompt(text)
        .with_context(|| format!("tokenizing {text:?}"))
}

/// Rejects prompts the model cannot take before any weight is loaded.
pub(super) fn check_prompt(tokens: &[u32], cfg: &ModelConfig) -> anyhow::Result<()> {
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

pub(super) fn load_weights(file: &GgufFile, cfg: &ModelConfig) -> anyhow::Result<Weights> {
    let progress = Progress::new("load", file.tensor_infos().len() as u64, "tensors");
    let w = Weights::load_with_progress(file, cfg, &mut |name| progress.inc(1, name))?;
    progress.finish();
    Ok(w)
}
