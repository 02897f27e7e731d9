//! Decode at batch 1 (issue 11): the Qwen3-30B-A3B-shaped model (hidden 2048, 32 q / 4 kv heads
//! × 128, 128 experts top-8 × 768, vocab 151936) with SYNTHETIC weights generated on the GPU
//! (`GpuModel::synthetic`, as benches/full_depth.rs), at 2 and 48 layers. For each prompt length
//! (512, 4096): prefill the prompt, then generate greedily through the API `kiln generate` uses
//! (`generate::generate` over a `PipelineDecoder`: one `Session`, each step a chunk of one token
//! whose logits come back to the host), timing every step by the host clock between consecutive
//! tokens (each step ends with its logits on the host, so it is synchronised). Reports the
//! median ms/token, tokens/s, time to first token (prefill + first token), and the roofline:
//! the bytes one step must read (`GpuModel::decode_bytes`, formula in the output) over the
//! device-to-device copy bandwidth measured in the same process (1 GiB copy, median of 10,
//! counted as bytes read + written). Writes `decode-bench.json` into `$KILN_BENCH_OUT`.
//!
//!     cargo bench --bench decode          (on a machine with a Hopper GPU)
//!
//! Without a usable GPU it says so and exits 0. Environment: `KILN_DECODE_LAYERS` (2,48),
//! `KILN_DECODE_PROMPTS` (512,4096), `KILN_DECODE_STEPS` (64 decode steps after the first
//! token), `KILN_BENCH_OUT` (where the JSON goes, default `.`).

mod common;
use common::*;

use kiln::bench::catalogue::prompt_ids;
use kiln::bench::runner::copy_bandwidth;
use kiln::generate::{GenerateOptions, PipelineDecoder, generate};
use kiln::gpu::Device;
use kiln::pipeline::{DECODE_BYTES, GpuModel};
use kiln::sample::SamplingOptions;
use serde_json::{Value, json};
use std::time::Instant;

/// The weights' seed (benches/full_depth.rs's) and the prompts'.
const WEIGHT_SEED: u64 = 0x6b69_6c6e;
const PROMPT_SEED: u64 = 0;

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

struct Run {
    /// Seconds between consecutive tokens: one decode step (and choosing its token) each.
    steps: Vec<f64>,
    prompt_s: f64,
    first_token_s: f64,
    tokens: Vec<u32>,
}

/// `new` tokens after `prompt`, greedily, in a session of `capacity` positions.
fn decode_run(
    model: &GpuModel,
    dev: &Device,
    prompt: &[u32],
    new: usize,
    capacity: usize,
) -> anyhow::Result<Run> {
    let mut dec = PipelineDecoder::new(model, dev, prompt.len(), capacity, None)?;
    let opts = GenerateOptions {
        max_new: new,
        sampling: SamplingOptions::default(), // temperature 0: greedy
        stop: Vec::new(),                     // never stop early: every run has `new` tokens
        keep_logits: false,
    };
    let mut stamps = Vec::with_capacity(new);
    let g = generate(&mut dec, prompt, capacity, &opts, &mut |_| {
        stamps.push(Instant::now());
        Ok(())
    })?;
    if g.tokens.len() != new {
        anyhow::bail!(
            "generated {} tokens, asked for {new} ({:?})",
            g.tokens.len(),
            g.reason
        );
    }
    Ok(Run {
        steps: stamps
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect(),
        prompt_s: g.prompt_time.as_secs_f64(),
        first_token_s: g.first_token_time.as_secs_f64(),
        tokens: g.tokens,
    })
}

/// One (layers, prompt) row: a short warm-up in a session of the same size (so the scratch the
/// model keeps is already sized), then the measured run.
fn measure(
    model: &GpuModel,
    dev: &Device,
    n_prompt: usize,
    steps: usize,
    bandwidth: Option<f64>,
) -> anyhow::Result<Value> {
    let cfg = &model.cfg;
    let prompt = prompt_ids(PROMPT_SEED, n_prompt, cfg.vocab);
    let capacity = n_prompt + steps + 1;
    decode_run(model, dev, &prompt, 2, capacity)?;
    let run = decode_run(model, dev, &prompt, steps + 1, capacity)?;
    let ms = median(&run.steps) * 1e3;
    let mean_ms = run.steps.iter().sum::<f64>() / run.steps.len() as f64 * 1e3;
    // The KV read grows by one position per step: count it at the middle step's context.
    let context = n_prompt + steps.div_ceil(2);
    let bytes = model.decode_bytes(context);
    let roofline_ms = bandwidth.map(|bw| bytes.total() as f64 / bw * 1e3);
    let pct = roofline_ms.map(|r| 100.0 * r / ms);
    println!(
        "{:>6} {:>6} {:>6} {:>9.3} {:>9.3} {:>9.1} {:>9.1} {:>10.3} {:>11} {:>8}",
        cfg.n_layer,
        n_prompt,
        run.steps.len(),
        ms,
        mean_ms,
        1e3 / ms,
        run.first_token_s * 1e3,
        bytes.total() as f64 / 1e9,
        roofline_ms.map_or("-".into(), |r| format!("{r:.3}")),
        pct.map_or("-".into(), |p| format!("{p:.1}%")),
    );
    Ok(json!({
        "layers": cfg.n_layer, "prompt": n_prompt, "steps": run.steps.len(),
        "median_ms_per_token": ms, "mean_ms_per_token": mean_ms, "tokens_per_s": 1e3 / ms,
        "min_ms": run.steps.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
        "max_ms": run.steps.iter().copied().fold(0.0, f64::max) * 1e3,
        "step_ms": run.steps.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
        "prompt_ms": run.prompt_s * 1e3, "time_to_first_token_ms": run.first_token_s * 1e3,
        "bytes_context": context,
        "bytes": {
            "layer_weights": bytes.layer_weights, "routed_experts": bytes.routed_experts,
            "lm_head": bytes.lm_head, "embedding_row": bytes.embedding_row,
            "kv_cache": bytes.kv_cache, "total": bytes.total(),
        },
        "roofline_ms_per_token": roofline_ms, "pct_of_roofline": pct,
        "first_tokens": &run.tokens[..run.tokens.len().min(8)],
    }))
}

/// decode-bench.json, rewritten after every row (a run cut short keeps what it measured).
struct Report {
    device: String,
    steps: usize,
    bandwidth: Option<f64>,
    copy_s: Vec<f64>,
    t0: Instant,
}

impl Report {
    fn write(&self, rows: &[Value], complete: bool) {
        let doc = json!({
            "device": self.device, "weights": "synthetic (GPU, seeded)",
            "weight_seed": WEIGHT_SEED, "prompt_seed": PROMPT_SEED, "steps": self.steps,
            "sampling": "greedy",
            "timing": "host clock between consecutive tokens of kiln::generate::generate over \
                       a PipelineDecoder (each step synchronised: its logits are copied to the \
                       host); median over the steps, after a warm-up run of 2 tokens",
            "bytes_formula": DECODE_BYTES,
            "roofline": "bytes per step (at the middle step's context) / device copy bandwidth",
            "copy_bandwidth_bytes_per_s": self.bandwidth, "copy_times_s": self.copy_s,
            "rows": rows, "complete": complete, "seconds": self.t0.elapsed().as_secs_f64(),
            "git_commit": std::env::var("KILN_GIT").ok(),
        });
        let dir = std::env::var("KILN_BENCH_OUT").unwrap_or_else(|_| ".".into());
        let path = std::path::Path::new(&dir).join("decode-bench.json");
        match std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()) {
            Ok(()) if complete => println!("wrote {}", path.display()),
            Ok(()) => {}
            Err(e) => println!("could not write {}: {e}", path.display()),
        }
    }
}

fn main() {
    let Some(dev) = cuda_or_say("decode bench") else {
        return;
    };
    let layer_list = env_list("KILN_DECODE_LAYERS", &[2, 48]);
    let prompts = env_list("KILN_DECODE_PROMPTS", &[512, 4096]);
    let steps: usize = env_or("KILN_DECODE_STEPS", 64usize).max(1);
    let t0 = Instant::now();
    let (bandwidth, copy_s) = match copy_bandwidth(&dev) {
        Ok((bw, times)) => (Some(bw), times),
        Err(e) => {
            println!("device copy failed ({e:#}): no roofline this run");
            (None, Vec::new())
        }
    };
    println!(
        "\ndecode at batch 1: Qwen3-30B-A3B-shaped model, SYNTHETIC weights generated on {}; \
         greedy, {steps} steps after the first token; device copy {} (1 GiB, read + written, \
         median of {})",
        dev.name(),
        bandwidth.map_or("-".into(), |b| format!("{:.3} TB/s", b / 1e12)),
        copy_s.len()
    );
    println!("bytes per step = {DECODE_BYTES}; counted at the middle step's context");
    println!("roofline ms/token = bytes per step / device copy bandwidth");
    println!(
        "{:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11} {:>8}",
        "layers",
        "prompt",
        "steps",
        "median ms",
        "mean ms",
        "tokens/s",
        "TTFT ms",
        "GB/step",
        "roofline ms",
        "%roof"
    );
    let report = Report {
        device: dev.name(),
        steps,
        bandwidth,
        copy_s,
        t0,
    };
    let mut rows = Vec::new();
    for &layers in &layer_list {
        let longest = prompts.iter().copied().max().unwrap_or(0) + steps + 1;
        let cfg = qwen3_30b_config(layers, longest);
        let t = Instant::now();
        let model = match GpuModel::synthetic(&dev, &cfg, WEIGHT_SEED)
            .and_then(|m| dev.synchronize().map(|()| m))
        {
            Ok(m) => m,
            Err(e) => {
                println!("{layers:>6} layers: building the model failed: {e}");
                rows.push(json!({"layers": layers, "error": format!("model: {e}")}));
                report.write(&rows, false);
                continue;
            }
        };
        let build_s = t.elapsed().as_secs_f64();
        for &n in &prompts {
            match measure(&model, &dev, n, steps, bandwidth) {
                Ok(mut row) => {
                    row["model_build_s"] = json!(build_s);
                    row["weights_gib"] = json!(model.device_bytes() as f64 / (1u64 << 30) as f64);
                    rows.push(row);
                }
                Err(e) => {
                    println!("{layers:>6} {n:>6} failed: {e:#}");
                    rows.push(json!({"layers": layers, "prompt": n, "error": format!("{e:#}")}));
                }
            }
            report.write(&rows, false);
        }
    }
    report.write(&rows, true);
}
