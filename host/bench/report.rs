//! What a bench run reports: one [`Row`] per (model, length), printed as a table and written
//! with the run's settings as `bench.json`, with the prompt ids as `prompts.json` (the keys
//! are read by scripts/bench_torch.py and scripts/gpu-bench.sh; docs/bench.md describes them).
//!
//! The JSON goes through serde: strings are escaped and numbers that are not finite become
//! `null` by serde_json's rules, and the document's shape is the structs below.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::cost::{self, ExpertCensus, Flops};
use crate::cli::output::outln;
use crate::model::ModelConfig;

/// How a (model, length) went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Error,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Error => "error",
        }
    }
}

/// One (model, length) of the run.
#[derive(Clone, Debug)]
pub struct Row {
    pub model: &'static str,
    pub n: usize,
    pub status: Status,
    pub reason: Option<String>,
    pub times_ms: Vec<f64>,
    pub warmup_ms: f64,
    pub launches: u64,
    pub chunks: usize,
    pub flops: Flops,
    pub weight_bytes: f64,
    pub profile_ms: f64,
    pub stages: Vec<(&'static str, f64)>,
    /// The experts the profiled pass's routing reached per MoE layer (`None` for dense models
    /// or unprofiled rows).
    pub census: Option<ExpertCensus>,
    /// What uniform routing would reach per MoE layer (`cost::expected_experts_hit`), which
    /// `weight_bytes` assumes.
    pub experts_expected: f64,
    pub logits_npy: Option<PathBuf>,
    pub top1: Option<(usize, f32)>,
}

impl Row {
    pub fn new(model: &'static str, n: usize, cfg: &ModelConfig) -> Self {
        Row {
            model,
            n,
            status: Status::Ok,
            reason: None,
            times_ms: Vec::new(),
            warmup_ms: f64::NAN,
            launches: 0,
            chunks: 0,
            flops: cost::prefill_flops(cfg, n),
            weight_bytes: cost::weight_bytes_read(cfg, n),
            profile_ms: f64::NAN,
            stages: Vec::new(),
            census: None,
            experts_expected: cost::expected_experts_hit(cfg, n),
            logits_npy: None,
            top1: None,
        }
    }

    pub fn not_run(mut self, status: Status, reason: String) -> Self {
        self.status = status;
        self.reason = Some(reason);
        self
    }

    pub fn median_ms(&self) -> f64 {
        median(&self.times_ms)
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A model as the report describes it: how it was made, or why it could not be.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum ModelRecord {
    Ready {
        name: &'static str,
        source: String,
        preset: &'static str,
        arch: &'static str,
        dtype: &'static str,
        seed: u64,
        config: ConfigRecord,
        /// Device bytes of the uploaded model (`GpuModel::device_bytes`).
        resident_weight_bytes: u64,
        build_seconds: f64,
        upload_seconds: f64,
    },
    Failed {
        name: &'static str,
        error: String,
    },
}

/// The config fields the report keeps.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigRecord {
    n_layer: usize,
    hidden: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_expert: usize,
    n_expert_used: usize,
    ff_exp: usize,
    vocab: usize,
    ctx: usize,
    // f32 as serde_json writes it: the shortest decimal, so 1e-6 is 1e-6.
    rope_base: f32,
    eps: f32,
    norm_topk: bool,
}

impl From<&ModelConfig> for ConfigRecord {
    fn from(c: &ModelConfig) -> Self {
        ConfigRecord {
            n_layer: c.n_layer,
            hidden: c.hidden,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            n_expert: c.n_expert,
            n_expert_used: c.n_expert_used,
            ff_exp: c.ff_exp,
            vocab: c.vocab,
            ctx: c.ctx,
            rope_base: c.rope_base,
            eps: c.eps,
            norm_topk: c.norm_topk,
        }
    }
}

/// A JSON object whose keys keep the order they were added in (serde_json's own map sorts).
#[derive(Clone, Debug)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One model's prompts in prompts.json: its vocabulary and the ids per length.
#[derive(Clone, Debug, Serialize)]
pub struct ModelPrompts {
    pub vocab: usize,
    pub lengths: Ordered<Vec<u32>>,
}

/// What every report of one run shares.
pub struct RunInfo {
    pub start: Instant,
    pub device_name: String,
    pub emulator: bool,
    pub mem: Option<(usize, usize)>,
    pub lengths: Vec<usize>,
    pub json_path: PathBuf,
    pub prompts_path: PathBuf,
    pub logits_dir: Option<PathBuf>,
    pub repeats: usize,
    pub seed: u64,
    pub skip_after_s: f64,
    pub deadline_s: f64,
    pub peak_tflops: f64,
    /// The bandwidth roofline (TB/s) and where it came from.
    pub peak_tbs: (f64, &'static str),
}

impl RunInfo {
    /// Percent of a GPU peak, or `None` on the emulator: the roofline is the GPU's, and the
    /// emulator's speed says nothing about it.
    fn pct_of(&self, value: f64, peak: f64) -> Option<f64> {
        (!self.emulator).then(|| 100.0 * value / peak)
    }
}

/// Writes bench.json and prompts.json as they stand (after every row, so a run stopped by a
/// time limit still leaves its figures; `complete` says whether it finished).
pub fn write_reports(
    run: &RunInfo,
    rows: &[Row],
    models: &[ModelRecord],
    prompts: &Ordered<ModelPrompts>,
    complete: bool,
) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Doc<'a> {
        tool: &'static str,
        kiln_version: &'static str,
        git_commit: Option<String>,
        device: &'a str,
        backend: &'static str,
        device_memory: Option<DeviceMemory>,
        roofline: Roofline,
        settings: Settings<'a>,
        formulas: Formulas,
        models: &'a [ModelRecord],
        results: Vec<RowRecord<'a>>,
        total_seconds: f64,
        complete: bool,
    }
    #[derive(Serialize)]
    struct DeviceMemory {
        free_bytes_at_start: usize,
        total_bytes: usize,
    }
    #[derive(Serialize)]
    struct Roofline {
        bf16_tflops: f64,
        bandwidth_tbs: f64,
        bandwidth_source: &'static str,
    }
    #[derive(Serialize)]
    struct Settings<'a> {
        repeats: usize,
        seed: u64,
        lengths: &'a [usize],
        skip_after_s: f64,
        deadline_s: f64,
        prefill_options: &'static str,
        prompts: String,
    }
    #[derive(Serialize)]
    struct Formulas {
        gemm_flops: &'static str,
        attention_flops: &'static str,
        lm_head_flops: &'static str,
        weight_bytes: &'static str,
    }
    #[derive(Serialize)]
    struct PromptsDoc<'a> {
        seed: u64,
        models: &'a Ordered<ModelPrompts>,
        logits_dir: Option<String>,
    }

    let doc = Doc {
        tool: "kiln bench",
        kiln_version: env!("CARGO_PKG_VERSION"),
        git_commit: git_commit(),
        device: &run.device_name,
        backend: if run.emulator { "emulator" } else { "cuda" },
        device_memory: match run.mem {
            Some((free, total)) if !run.emulator => Some(DeviceMemory {
                free_bytes_at_start: free,
                total_bytes: total,
            }),
            _ => None,
        },
        roofline: Roofline {
            bf16_tflops: run.peak_tflops,
            bandwidth_tbs: run.peak_tbs.0,
            bandwidth_source: run.peak_tbs.1,
        },
        settings: Settings {
            repeats: run.repeats,
            seed: run.seed,
            lengths: &run.lengths,
            skip_after_s: run.skip_after_s,
            deadline_s: run.deadline_s,
            prefill_options: "default: one chunk, last logits only",
            prompts: run.prompts_path.display().to_string(),
        },
        formulas: Formulas {
            gemm_flops: cost::GEMM_FLOPS,
            attention_flops: cost::ATTENTION_FLOPS,
            lm_head_flops: cost::LM_HEAD_FLOPS,
            weight_bytes: cost::WEIGHT_BYTES,
        },
        models,
        results: rows.iter().map(|r| RowRecord::new(r, run)).collect(),
        total_seconds: run.start.elapsed().as_secs_f64(),
        complete,
    };
    let text = serde_json::to_string_pretty(&doc).context("encoding bench.json")?;
    write_file(&run.json_path, &text)?;
    let prompts_doc = PromptsDoc {
        seed: run.seed,
        models: prompts,
        logits_dir: run.logits_dir.as_ref().map(|d| d.display().to_string()),
    };
    // Thousands of ids: one line, not one line per id.
    let text = serde_json::to_string(&prompts_doc).context("encoding prompts.json")?;
    write_file(&run.prompts_path, &text)
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))
}

fn git_commit() -> Option<String> {
    std::env::var("KILN_GIT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| option_env!("KILN_GIT").map(str::to_string))
}

/// A row as bench.json holds it.
#[derive(Serialize)]
struct RowRecord<'a> {
    model: &'static str,
    n: usize,
    status: Status,
    reason: Option<&'a str>,
    warmup_ms: f64,
    times_ms: &'a [f64],
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    tokens_per_s: f64,
    launches: u64,
    chunks: usize,
    flops: FlopsRecord,
    tflops: f64,
    pct_of_peak_tflops: Option<f64>,
    weight_bytes: f64,
    weight_tbs: f64,
    pct_of_peak_bandwidth: Option<f64>,
    top1: Option<Top1>,
    logits_npy: Option<String>,
    profile: Option<Profile>,
    expert_census: Option<CensusRecord<'a>>,
}

/// The experts the profiled pass's routing reached per MoE layer, against uniform routing
/// (which `weight_bytes` assumes), and the weight bytes and rate with the measured mean.
#[derive(Serialize)]
struct CensusRecord<'a> {
    per_layer: &'a [usize],
    mean: f64,
    expected_uniform: f64,
    weight_bytes: f64,
    weight_tbs: f64,
}

#[derive(Serialize)]
struct FlopsRecord {
    #[serde(flatten)]
    parts: Flops,
    total: f64,
}

#[derive(Serialize)]
struct Top1 {
    id: usize,
    logit: f32,
}

#[derive(Serialize)]
struct Profile {
    wall_ms: f64,
    stages_ms_total: f64,
    stages: Vec<Stage>,
}

#[derive(Serialize)]
struct Stage {
    stage: &'static str,
    ms: f64,
    pct: f64,
}

impl<'a> RowRecord<'a> {
    fn new(r: &'a Row, run: &RunInfo) -> Self {
        let med = r.median_ms();
        let secs = med / 1e3;
        let tflops = r.flops.total() / secs / 1e12;
        let tbs = r.weight_bytes / secs / 1e12;
        let stages_s: f64 = r.stages.iter().map(|(_, s)| s).sum();
        RowRecord {
            model: r.model,
            n: r.n,
            status: r.status,
            reason: r.reason.as_deref(),
            warmup_ms: r.warmup_ms,
            times_ms: &r.times_ms,
            median_ms: med,
            min_ms: r.times_ms.iter().copied().fold(f64::NAN, f64::min),
            max_ms: r.times_ms.iter().copied().fold(f64::NAN, f64::max),
            tokens_per_s: r.n as f64 / secs,
            launches: r.launches,
            chunks: r.chunks,
            flops: FlopsRecord {
                parts: r.flops,
                total: r.flops.total(),
            },
            tflops,
            pct_of_peak_tflops: run.pct_of(tflops, run.peak_tflops),
            weight_bytes: r.weight_bytes,
            weight_tbs: tbs,
            pct_of_peak_bandwidth: run.pct_of(tbs, run.peak_tbs.0),
            top1: r.top1.map(|(id, logit)| Top1 { id, logit }),
            logits_npy: r.logits_npy.as_ref().map(|p| p.display().to_string()),
            expert_census: r.census.as_ref().map(|c| CensusRecord {
                per_layer: &c.per_layer,
                mean: c.mean,
                expected_uniform: r.experts_expected,
                weight_bytes: c.weight_bytes,
                weight_tbs: c.weight_bytes / secs / 1e12,
            }),
            profile: (!r.stages.is_empty()).then(|| Profile {
                wall_ms: r.profile_ms,
                stages_ms_total: stages_s * 1e3,
                stages: r
                    .stages
                    .iter()
                    .map(|&(stage, s)| Stage {
                        stage,
                        ms: s * 1e3,
                        pct: 100.0 * s / stages_s,
                    })
                    .collect(),
            }),
        }
    }
}

/// `v` with three significant digits (no fewer integer digits): a rate of 0.4 tokens/s is
/// not shown as 0, nor 12 µTFLOP/s as 0.00.
pub fn sig3(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".into()
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// The table on stdout, and the per-stage breakdown of each profiled row.
pub fn print_table(rows: &[Row], run: &RunInfo) -> anyhow::Result<()> {
    outln!(
        "\n{:<6} {:>6} {:>10} {:>11} {:>8} {:>9} {:>7} {:>9} {:>6}",
        "model",
        "N",
        "median ms",
        "tokens/s",
        "launches",
        "TFLOP/s",
        "%peak",
        "TB/s",
        "%bw"
    )?;
    for r in rows {
        if r.status != Status::Ok {
            outln!(
                "{:<6} {:>6} {}: {}",
                r.model,
                r.n,
                r.status.name(),
                r.reason.as_deref().unwrap_or("")
            )?;
            continue;
        }
        let med = r.median_ms();
        let secs = med / 1e3;
        let tflops = r.flops.total() / secs / 1e12;
        let tbs = r.weight_bytes / secs / 1e12;
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |p| format!("{}%", sig3(p)));
        outln!(
            "{:<6} {:>6} {:>10} {:>11} {:>8} {:>9} {:>7} {:>9} {:>6}",
            r.model,
            r.n,
            sig3(med),
            sig3(r.n as f64 / secs),
            r.launches,
            sig3(tflops),
            pct(run.pct_of(tflops, run.peak_tflops)),
            sig3(tbs),
            pct(run.pct_of(tbs, run.peak_tbs.0))
        )?;
    }
    if run.emulator {
        outln!(
            "(CPU emulator: the times are the emulation's, and no GPU roofline applies: %peak \
             and %bw are left out)"
        )?;
    } else {
        let (tbs, source) = run.peak_tbs;
        outln!(
            "(%peak against {} TFLOP/s bf16; %bw against {} TB/s, {source})",
            sig3(run.peak_tflops),
            sig3(tbs)
        )?;
    }
    for r in rows.iter().filter(|r| !r.stages.is_empty()) {
        let total: f64 = r.stages.iter().map(|(_, s)| s).sum();
        let parts: Vec<String> = r
            .stages
            .iter()
            .map(|(n, s)| format!("{n} {:.0}%", 100.0 * s / total))
            .collect();
        outln!(
            "  profile {} N={} ({} ms synchronised): {}",
            r.model,
            r.n,
            sig3(r.profile_ms),
            parts.join(" | ")
        )?;
        if let Some(c) = &r.census {
            let tbs = c.weight_bytes / (r.median_ms() / 1e3) / 1e12;
            outln!(
                "    experts reached per MoE layer: mean {:.1} (min {}, max {}; uniform \
                 routing {:.1}): weights read ≈ {:.2} GB, {} TB/s{}",
                c.mean,
                c.min(),
                c.max(),
                r.experts_expected,
                c.weight_bytes / 1e9,
                sig3(tbs),
                if c.mean < 0.9 * r.experts_expected {
                    " (the table's TB/s assumes uniform routing)"
                } else {
                    ""
                }
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig3_keeps_small_rates_visible() {
        assert_eq!(sig3(4.134), "4.13");
        assert_eq!(sig3(0.4134), "0.413");
        assert_eq!(sig3(1234.6), "1235");
        assert_eq!(sig3(12.34), "12.3");
        assert_eq!(sig3(1.2e-5), "1.20e-5");
        assert_eq!(sig3(f64::NAN), "-");
    }

    #[test]
    fn ordered_maps_keep_their_order_and_non_finite_numbers_are_null() {
        let m = Ordered(vec![("512".to_string(), f64::NAN), ("8".to_string(), 1.5)]);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"512":null,"8":1.5}"#
        );
    }
}
