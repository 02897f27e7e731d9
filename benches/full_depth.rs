//! Full-depth prefill: a 48-layer Qwen3-30B-A3B-shaped model (hidden 2048, 32 q / 4 kv heads
//! × 128, 128 experts top-8 × 768, vocab 151936) with SYNTHETIC weights generated on the GPU
//! from a seed (`GpuModel::synthetic`: ~60 GB in well under a second, the same bits every run),
//! prefilled in one chunk at N ∈ {512, 2048, 4096, 8192, 16384, 32768}. Prints tokens/s, model
//! TFLOP/s and % of the peak, peak GPU memory and a per-stage breakdown (one profiled run,
//! synchronised per stage), and writes `full-depth-bench.json` (into `$KILN_BENCH_OUT`).
//!
//!     cargo bench --bench full_depth          (on a machine with a Hopper GPU)
//!
//! Without a usable GPU it says so and exits 0. `KILN_PEAK_TFLOPS` is the bf16 matmul peak
//! measured in the same run by the peer script (default 790); `KILN_BENCH_LAYERS` (48) and
//! `KILN_FULL_DEPTH_LENGTHS` override the depth and the lengths.

mod common;
use common::*;

use kiln::bench::cost::{ExpertCensus, prefill_flops};
use kiln::gpu::Device;
use kiln::pipeline::{GpuModel, PrefillOptions, prefill};
use std::time::Instant;

fn used_gib(dev: &Device) -> f64 {
    let (free, total) = dev.memory_info().expect("memory info");
    (total - free) as f64 / (1u64 << 30) as f64
}

fn main() {
    let Some(dev) = cuda_or_say("full-depth bench") else {
        return;
    };
    let peak: f64 = env_or("KILN_PEAK_TFLOPS", 790.0);
    let layers: usize = env_or("KILN_BENCH_LAYERS", 48);
    let lengths = env_list(
        "KILN_FULL_DEPTH_LENGTHS",
        &[512, 2048, 4096, 8192, 16384, 32768],
    );
    let cfg = qwen3_30b_config(layers, lengths.iter().copied().max().unwrap_or(0));
    let before = used_gib(&dev);
    let t = Instant::now();
    let model = GpuModel::synthetic(&dev, &cfg, 0x6b69_6c6e).expect("synthetic model");
    dev.synchronize().expect("sync");
    let gen_s = t.elapsed().as_secs_f64();
    let weights_gib = used_gib(&dev) - before;
    println!(
        "\nfull depth: {layers}-layer Qwen3-30B-A3B-shaped model, SYNTHETIC weights generated on \
         {} in {gen_s:.2} s ({weights_gib:.1} GiB); peak used {peak:.0} TFLOP/s",
        dev.name()
    );
    println!(
        "{:>6} {:>10} {:>10} {:>8} {:>7} {:>9}  stages (profiled run)",
        "N", "median ms", "tokens/s", "TFLOP/s", "%peak", "GPU GiB"
    );
    let mut rows = Vec::new();
    for &n in &lengths {
        let tokens: Vec<u32> = (0..n).map(|i| (i * 7919 % cfg.vocab) as u32).collect();
        let opts = PrefillOptions::default();
        let run = || prefill(&model, &dev, &tokens, &opts).map(|o| o.logits.len());
        if let Err(e) = run() {
            println!("{n:>6} failed: {e}");
            break;
        }
        let mut times: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                run().expect("prefill");
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let secs = times[1];
        let mem = used_gib(&dev);
        let flops = prefill_flops(&cfg, n).total();
        let tflops = flops / secs / 1e12;
        // The profiled pass also counts the experts each MoE layer's routing reached: the
        // weights read per layer are these experts' (random weights once routed every token to
        // a few experts; synth::ATTN_OUTPUT_GAIN, NOTES sessions 8 and 9).
        let profiled = PrefillOptions {
            profile: true,
            expert_census: true,
            ..Default::default()
        };
        let out = prefill(&model, &dev, &tokens, &profiled).expect("profiled prefill");
        let stages = out.stage_seconds;
        let census = ExpertCensus::new(&cfg, n, out.experts_reached);
        let total: f64 = stages.iter().map(|s| s.1).sum();
        let breakdown: Vec<String> = stages
            .iter()
            .map(|(name, s)| format!("{name} {:.0}%", 100.0 * s / total))
            .collect();
        println!(
            "{n:>6} {:>10.1} {:>10.0} {:>8.0} {:>6.1}% {:>9.1}  {}",
            secs * 1e3,
            n as f64 / secs,
            tflops,
            100.0 * tflops / peak,
            mem,
            breakdown.join(" | ")
        );
        if let Some(c) = &census {
            println!(
                "{:>6} experts reached per MoE layer: mean {:.1} (min {}, max {}) of {}",
                "",
                c.mean,
                c.min(),
                c.max(),
                cfg.n_expert
            );
        }
        rows.push(serde_json::json!({
            "n": n, "ms": secs * 1e3, "tokens_per_s": n as f64 / secs, "flops": flops, "tflops": tflops,
            "gpu_gib": mem,
            "experts_reached": census.as_ref().map(|c| &c.per_layer),
            "experts_reached_mean": census.as_ref().map(|c| c.mean),
            "stages": stages.iter().map(|(k, v)| serde_json::json!({"stage": k, "s": v})).collect::<Vec<_>>(),
        }));
    }
    let json = serde_json::json!({
        "device": dev.name(), "layers": layers, "weights": "synthetic (GPU, seeded)",
        "weights_gib": weights_gib, "generate_s": gen_s, "peak_tflops": peak, "rows": rows,
    });
    let dir = std::env::var("KILN_BENCH_OUT").unwrap_or_else(|_| ".".into());
    let path = std::path::Path::new(&dir).join("full-depth-bench.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => println!("could not write {}: {e}", path.display()),
    }
}
