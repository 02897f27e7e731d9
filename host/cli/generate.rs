//! `kiln generate`: prefill a prompt, then continue it token by token, streaming the text.
//!
//! stdout carries the generated text only (each token's bytes as it comes, then a newline);
//! everything else (model, device, times, why it stopped) goes to stderr, so that
//! `kiln generate … > out.txt` holds just the continuation.

use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::Args;

use super::DeviceArg;
use super::output::{self, Progress, note};
use super::prefill::{
    Backend, ModelPrompt, check_prompt, load_weights, parse_chunk, prompt_tokens, select_backend,
};
use crate::generate::{
    Decoder, GenerateError, GenerateOptions, Generation, PipelineDecoder, ReferenceDecoder,
    StopReason, chat_prompt, generate, stop_tokens,
};
use crate::model::ModelConfig;
use crate::pipeline::{GpuModel, PrefillOptions, prefill};
use crate::sample::SamplingOptions;
use crate::tokenizer::Tokenizer;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub input: ModelPrompt,
    /// New tokens to generate at most (stops earlier at an end-of-text token or the context
    /// end).
    #[arg(short = 'n', long = "n-predict", value_name = "N", default_value = "32",
          value_parser = parse_count)]
    pub n_predict: usize,
    /// Prompt tokens per chunk on the GPU pipeline, at least 1 (default: the whole prompt);
    /// any size gives the same bits.
    #[arg(long, value_parser = parse_chunk)]
    pub chunk: Option<usize>,
    /// Wrap the prompt as a user message in the model's chat template (ChatML only).
    #[arg(long)]
    pub chat: bool,
    /// Sampling temperature (default 0: greedy, the highest logit, the lowest id on a tie).
    #[arg(long, value_name = "T", allow_hyphen_values = true, value_parser = parse_temperature)]
    pub temp: Option<f64>,
    /// Sample from the K most likely tokens only (needs --temp).
    #[arg(long, value_name = "K", allow_hyphen_values = true, value_parser = parse_top_k)]
    pub top_k: Option<usize>,
    /// Sample from the fewest most likely tokens whose probability reaches P (needs --temp).
    #[arg(long, value_name = "P", allow_hyphen_values = true, value_parser = parse_top_p)]
    pub top_p: Option<f64>,
    /// Seed of the sampling RNG (needs --temp; default 0): the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("generate at least 1 token".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a positive integer")),
    }
}

fn parse_temperature(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!(
            "{s:?} is not a temperature (a number ≥ 0; 0 is greedy)"
        )),
    }
}

fn parse_top_k(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(format!("{s:?} is not a top-k (an integer ≥ 1)")),
    }
}

fn parse_top_p(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("{s:?} is not a top-p (a number in (0, 1])")),
    }
}

/// The sampling options, refusing those that greedy decoding would ignore.
fn sampling(args: &GenerateArgs) -> anyhow::Result<SamplingOptions> {
    let temperature = args.temp.unwrap_or(0.0);
    if temperature == 0.0 {
        let unused = [
            ("--top-k", args.top_k.is_some()),
            ("--top-p", args.top_p.is_some()),
            ("--seed", args.seed.is_some()),
        ];
        if let Some((opt, _)) = unused.iter().find(|(_, given)| *given) {
            bail!(
                "{opt} applies to sampling, and without --temp (or with --temp 0) decoding is \
                 greedy; add --temp T (e.g. --temp 0.8)"
            );
        }
    }
    Ok(SamplingOptions {
        temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed.unwrap_or(0),
    })
}

fn say(args: std::fmt::Arguments) -> anyhow::Result<()> {
    note(args);
    Ok(())
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let sampling = sampling(args)?;
    if args.chat && args.input.tokens.is_some() {
        bail!(
            "--chat wraps a text prompt (-p TEXT) in the chat template; --tokens are fed as given"
        );
    }
    let (file, label) = args.input.open_model()?;
    let cfg = ModelConfig::from_gguf(&file).with_context(|| format!("reading model {label}"))?;
    let tokenizer = Tokenizer::from_gguf(&file);
    let text = match (&args.input.prompt, args.chat) {
        (Some(p), true) => Some(chat_prompt(&file, p).map_err(|e| anyhow!(e))?),
        (None, true) => bail!("--chat needs the user's message as -p TEXT"),
        (p, false) => p.clone(),
    };
    let tokens = prompt_tokens(args.input.tokens.as_ref(), text.as_deref(), &tokenizer)?;
    if args.chat {
        let start = tokenizer
            .as_ref()
            .ok()
            .and_then(|t| t.id_of("<|im_start|>"));
        if start.is_none_or(|id| !tokens.contains(&id)) {
            bail!("--chat: the vocabulary has no <|im_start|> control token for ChatML");
        }
    }
    check_prompt(&tokens, &cfg)?;
    let pipeline_only = args.chunk.is_some().then_some("--chunk");
    let backend = select_backend(args.input.device, pipeline_only, &say)?;
    // Only now, so that a bad command line gets its one error line and nothing else.
    note(format_args!("model: {label}"));
    let t = Instant::now();
    let weights =
        load_weights(&file, &cfg).with_context(|| format!("loading weights of {label}"))?;
    note(format_args!("load: {:.3} s", t.elapsed().as_secs_f64()));
    let tok = tokenizer.as_ref().ok();
    let opts = GenerateOptions {
        max_new: args.n_predict,
        sampling,
        stop: stop_tokens(&file, tok, cfg.vocab),
        keep_logits: false,
    };
    // The positions the run needs: the last token chosen is never fed.
    let capacity = tokens.len().saturating_add(args.n_predict - 1).min(cfg.ctx);
    let mut printed = false;
    let mut stream = |id: u32| -> anyhow::Result<()> {
        printed = true;
        match tok {
            Some(t) => output::raw(&t.token_bytes(id).unwrap_or_default()),
            None => output::raw(format!("{id} ").as_bytes()),
        }
    };
    let result = match &backend {
        Backend::CpuReference => {
            if !matches!(args.input.device, DeviceArg::Auto) {
                note(format_args!("device: CPU reference (f64 accumulation)"));
            }
            let mut dec = ReferenceDecoder::new(&cfg, &weights);
            run_decoder(&mut dec, &tokens, capacity, &opts, &mut stream)?
        }
        Backend::Pipeline(dev) => {
            note(format_args!("device: {}", dev.name()));
            let t = Instant::now();
            let progress = Progress::new("upload", weights.tensors().len() as u64, "tensors");
            let model = GpuModel::upload(dev, &cfg, &weights, &|n| progress.inc(n, ""))
                .context("uploading weights")?;
            progress.finish();
            dev.synchronize()?;
            note(format_args!("upload: {:.3} s", t.elapsed().as_secs_f64()));
            // Module setup on the first launches stays out of the timed prompt (as prefill).
            prefill(&model, dev, &tokens[..1], &PrefillOptions::default()).context("warm-up")?;
            dev.synchronize()?;
            let mut dec = PipelineDecoder::new(&model, dev, tokens.len(), capacity, args.chunk)?;
            run_decoder(&mut dec, &tokens, capacity, &opts, &mut stream)?
        }
    };
    if printed {
        output::raw(b"\n")?;
    }
    report(&result, tokens.len(), args.n_predict, &cfg, tok);
    Ok(())
}

fn run_decoder(
    dec: &mut dyn Decoder,
    tokens: &[u32],
    capacity: usize,
    opts: &GenerateOptions,
    stream: &mut dyn FnMut(u32) -> anyhow::Result<()>,
) -> anyhow::Result<Generation> {
    match generate(dec, tokens, capacity, opts, stream) {
        Ok(g) => Ok(g),
        // The stream's own error (stdout closed) as it was, so that main recognises it.
        Err(GenerateError::Callback(e)) => Err(e),
        Err(e) => Err(anyhow::Error::new(e).context("generating")),
    }
}

/// Why it stopped and the three speeds, on stderr.
fn report(g: &Generation, prompt: usize, n: usize, cfg: &ModelConfig, tok: Option<&Tokenizer>) {
    let why = match g.reason {
        StopReason::MaxTokens => format!("{n} tokens generated (-n {n})"),
        StopReason::EndOfText(id) => {
            let text = tok.map_or_else(|| "?".into(), |t| t.display_token(id));
            format!("end-of-text token {id} {text}")
        }
        StopReason::ContextEnd => format!("the context is full (ctx = {} positions)", cfg.ctx),
    };
    note(format_args!("stop: {why}"));
    let rate = |count: usize, secs: f64| count as f64 / secs.max(1e-9);
    let ps = g.prompt_time.as_secs_f64();
    note(format_args!(
        "prompt: {prompt} tokens, {ps:.3} s, {:.1} tokens/s",
        rate(prompt, ps)
    ));
    let ss = g.step_time.as_secs_f64();
    note(format_args!(
        "generation: {} tokens, {} decode steps, {ss:.3} s, {:.1} tokens/s",
        g.tokens.len(),
        g.steps,
        rate(g.steps, ss)
    ));
    note(format_args!(
        "time to first token: {:.3} s",
        g.first_token_time.as_secs_f64()
    ));
}
