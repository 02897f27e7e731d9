//! `kiln bench` end to end on the CPU emulator (the GPU run is `gpu-bundle/run.sh bench`): the
//! JSON it writes parses and holds every figure, the prompts file holds the ids it ran, and
//! without a GPU the default device fails on one line.

mod common;

use common::kiln;
use serde_json::Value;
/// A fresh directory for one test, removed when dropped: when the test ends, passed or not.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// `kiln bench --device emulator` with `args` after it.
fn bench_on_emulator(args: &[&str]) -> std::process::Output {
    let mut all = vec!["bench", "--device", "emulator"];
    all.extend_from_slice(args);
    kiln(&all)
}

fn read_json(path: &std::path::Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", path.display()))
}

#[test]
fn bench_on_the_emulator_writes_parseable_json() {
    let dir = temp_dir("bench");
    let json = dir.join("bench.json");
    let logits = dir.join("logits");
    let o = bench_on_emulator(&[
        "--models",
        "tiny",
        "--lengths",
        "8",
        "--repeats",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--logits-dir",
        logits.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "kiln bench failed:\n{out}\n{err}");
    assert!(out.contains("tokens/s"), "no table:\n{out}");

    let doc = read_json(&json);
    assert_eq!(doc["tool"], "kiln bench");
    assert_eq!(doc["backend"], "emulator");
    assert_eq!(doc["device"], "CPU emulator");
    let results = doc["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["model"], "tiny");
    assert_eq!(r["n"], 8);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["chunks"], 1);
    assert_eq!(r["times_ms"].as_array().unwrap().len(), 1);
    for key in ["median_ms", "tokens_per_s", "tflops", "weight_tbs"] {
        let v = r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {r}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    assert!(r["launches"].as_u64().unwrap() > 0);
    // FLOPs of the tiny model at N = 8 (2 layers, hidden 256, 4 heads x 128, 2 kv heads,
    // top-2 of 4 experts x 256, vocab 512), counted by hand.
    let attn_proj = 2.0 * 8.0 * 2.0 * (256.0 * 512.0 * 2.0 + 2.0 * 256.0 * 256.0);
    assert_eq!(r["flops"]["attn_proj"].as_f64().unwrap(), attn_proj);
    assert_eq!(
        r["flops"]["attention"].as_f64().unwrap(),
        2.0 * 4.0 * 64.0 / 2.0 * 512.0
    );
    assert_eq!(r["flops"]["lm_head"].as_f64().unwrap(), 2.0 * 256.0 * 512.0);
    let stages = r["profile"]["stages"].as_array().expect("profile stages");
    assert!(
        stages.iter().any(|s| s["stage"] == "moe experts"),
        "{stages:?}"
    );
    // The profiled pass's census: per MoE layer, between top-k (2) and all 4 experts; its
    // bytes differ from the uniform-routing count by exactly the experts' weights (2 layers ×
    // 3 matrices of 256 × 256 bf16 per expert).
    let census = &r["expert_census"];
    let per_layer: Vec<u64> = census["per_layer"]
        .as_array()
        .expect("expert_census.per_layer")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(per_layer.len(), 2, "{census}");
    assert!(per_layer.iter().all(|&e| (2..=4).contains(&e)), "{census}");
    let mean = census["mean"].as_f64().unwrap();
    assert_eq!(mean, per_layer.iter().sum::<u64>() as f64 / 2.0);
    let expected = census["expected_uniform"].as_f64().unwrap();
    assert!(
        (expected - 4.0 * (1.0 - 0.5f64.powi(8))).abs() < 1e-12,
        "{census}"
    );
    let per_expert = 2.0 * 3.0 * 2.0 * 256.0 * 256.0;
    let delta = census["weight_bytes"].as_f64().unwrap() - r["weight_bytes"].as_f64().unwrap();
    assert!(
        (delta - (mean - expected) * per_expert).abs() < 1.0,
        "{census} vs weight_bytes {}",
        r["weight_bytes"]
    );
    assert!(out.contains("experts reached per MoE layer"), "{out}");
    let npy = r["logits_npy"].as_str().expect("logits path");
    let logits = kiln::npy::read_f32(npy).expect("reading the logits");
    assert_eq!(logits.shape, vec![512]);
    assert_eq!(r["top1"]["id"].as_u64().unwrap() as usize, {
        let l = &logits.data;
        (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap()
    });

    let prompts = read_json(&dir.join("prompts.json"));
    let ids = prompts["models"]["tiny"]["lengths"]["8"]
        .as_array()
        .expect("prompt ids");
    assert_eq!(ids.len(), 8);
    assert!(ids.iter().all(|t| t.as_u64().unwrap() < 512));
}

/// `--weights gpu`: the model's weights come from `GpuModel::synthetic` (its kernels run on the
/// emulator too), and the JSON says so.
#[test]
fn bench_with_weights_generated_on_the_device() {
    let dir = temp_dir("bench-gpu-weights");
    let json = dir.join("bench.json");
    let o = bench_on_emulator(&[
        "--models",
        "tiny",
        "--lengths",
        "8",
        "--weights",
        "gpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "kiln bench --weights gpu failed:\n{err}"
    );
    assert!(err.contains("generated on the GPU"), "{err}");
    let doc = read_json(&json);
    let source = doc["models"][0]["source"]
        .as_str()
        .expect("models[0].source");
    assert!(source.contains("generated on the GPU"), "{source}");
    assert_eq!(doc["results"][0]["status"], "ok", "{}", doc["results"][0]);
}

#[test]
fn bench_rejects_what_the_emulator_cannot_run() {
    for (args, needle) in [
        (&["--models", "30b"][..], "only the tiny model"),
        (&["--lengths", "4096"][..], "at most 64 tokens"),
        (&["--models", "7b"][..], "unknown bench model"),
    ] {
        let o = bench_on_emulator(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err:?}"
        );
    }
}

/// Without a usable GPU (CI, this file's usual home) the default device is one line of error
/// and a non-zero exit, never a panic. Where a GPU works this would run the real bench, so the
/// test then has nothing to check.
#[test]
fn bench_without_a_gpu_fails_on_one_line() {
    if kiln::gpu::Device::cuda().is_ok() {
        eprintln!("a CUDA GPU is usable here: nothing to check");
        return;
    }
    let dir = temp_dir("nogpu");
    let json = dir.join("bench.json");
    let o = kiln(&["bench", "--json", json.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with("error: kiln bench needs a CUDA GPU"),
        "{err:?}"
    );
    assert!(err.contains("--device emulator"), "{err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
    assert!(!json.exists(), "no JSON without a run");
}

/// A `--model-file` must hold the model the bench names: a file with other weights (another
/// seed) is an error row in the JSON and a non-zero exit, before any prefill.
#[test]
fn bench_rejects_a_model_file_with_other_weights() {
    let dir = temp_dir("seed");
    let gguf = dir.join("tiny-seed1.gguf");
    let o = kiln(&[
        "synth",
        "--arch",
        "qwen3moe",
        "--preset",
        "tiny",
        "--layers",
        "2",
        "--dtype",
        "BF16",
        "--seed",
        "1",
        "-o",
        gguf.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = dir.join("bench.json");
    let model_file = format!("tiny={}", gguf.display());
    let o = bench_on_emulator(&[
        "--model-file",
        &model_file,
        "--json",
        json.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a seed-1 file passed as seed 0");
    assert!(err.contains("is not the tiny model"), "{err}");
    let doc = read_json(&json);
    let r = &doc["results"][0];
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["times_ms"].as_array().unwrap().is_empty());
}

/// Issue 9, item 10: the emulator smoke run finishes in seconds with its defaults, and the
/// table's figures are what was measured: tokens/s agrees with N and the median to the digits
/// shown (a 2-token prompt was printed as 0 tokens/s), and no GPU roofline percentage is made
/// up for the emulator.
#[test]
fn bench_smoke_run_is_quick_and_its_figures_honest() {
    let dir = temp_dir("smoke");
    let json = dir.join("bench.json");
    let start = std::time::Instant::now();
    let o = bench_on_emulator(&["--lengths", "2", "--json", json.to_str().unwrap()]);
    let secs = start.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(secs < 60.0, "the smoke run took {secs:.0} s");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("tiny "))
        .unwrap_or_else(|| panic!("no table row:\n{out}"))
        .split_whitespace()
        .collect();
    let median_ms: f64 = row[2].parse().unwrap();
    let tokens_per_s: f64 = row[3].parse().unwrap();
    let implied = tokens_per_s * median_ms / 1e3;
    assert!(
        (implied - 2.0).abs() < 0.02,
        "tokens/s {} with a median of {} ms is not 2 tokens:\n{out}",
        row[3],
        row[2]
    );
    assert_eq!(row[6], "-", "a GPU %peak for the emulator:\n{out}");
    let doc = read_json(&json);
    let r = &doc["results"][0];
    assert!(r["pct_of_peak_tflops"].is_null(), "{r}");
    assert_eq!(doc["settings"]["repeats"], 1);
}

/// One token reaches exactly its top-k (2) experts in each of the tiny model's 2 MoE layers:
/// the census counts experts with rows, not experts in the table.
#[test]
fn bench_census_of_one_token_is_its_top_k() {
    let dir = temp_dir("bench-census");
    let json = dir.join("bench.json");
    let o = bench_on_emulator(&[
        "--models",
        "tiny",
        "--lengths",
        "1",
        "--repeats",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "kiln bench failed:\n{out}");
    let doc = read_json(&json);
    let census = &doc["results"][0]["expert_census"];
    assert_eq!(census["per_layer"], serde_json::json!([2, 2]), "{census}");
}
