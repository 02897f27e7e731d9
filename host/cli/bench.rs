//! `kiln bench`: prefill throughput of the GPU pipeline on synthetic models.
//!
//! For each model and prompt length N: one warm-up prefill, `--repeats` timed prefills (the
//! median is reported; the clock stops after `Device::synchronize`), then one profiled run for
//! the per-stage breakdown. Every figure goes to `--json`; the prompt ids go to `--prompts` and
//! the last-position logits to `--logits-dir`, so `scripts/bench_torch.py` can run the same
//! prompts on the same weights and check that it computes the same function.
//!
//! FLOPs and bytes are counted from the config (see docs/bench.md): GEMMs at 2 FLOPs per
//! weight touched per token (routed experts only), causal attention at 4·N²/2·n_head·head_dim
//! per layer, the LM head for the last position only; bytes are the weights one prefill reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::Args;

use super::DeviceArg;
use crate::gguf::{GgmlType, GgufFile};
use crate::gpu::Device;
use crate::model::{Arch, ModelConfig, Weights};
use crate::npy;
use crate::pipeline::{GpuModel, PrefillOptions, PrefillOutput, prefill};
use crate::rng::Rng;
use crate::synth::{self, Preset, SynthSpec};

/// Longest prompt the emulator is asked to run (it executes every GPU thread on the CPU).
const EMULATOR_MAX_LEN: usize = 64;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// cuda (alias gpu; the default), emulator (a CPU smoke run of the code path: tiny model,
    /// short prompts), or auto (the GPU if usable, else the emulator). cpu has no pipeline to
    /// measure.
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: DeviceArg,
    /// Models, comma-separated: tiny (qwen3moe fixture dims, 2 layers), 30b (Qwen3-30B-A3B
    /// dims, --layers layers). Default: tiny,30b (emulator: tiny).
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Prompt lengths, comma-separated. Default: 512,2048,4096,8192 (emulator: 8).
    #[arg(long, value_delimiter = ',')]
    pub lengths: Option<Vec<usize>>,
    /// Layers of the 30b model.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Timed prefills per (model, length); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seed of the synthetic weights (as `kiln synth --seed`) and of the prompt ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write every figure as JSON.
    #[arg(long, default_value = "bench.json")]
    pub json: PathBuf,
    /// Where to write the prompt ids (default: prompts.json beside --json).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Write each run's last-position logits to DIR/logits-MODEL-N.npy.
    #[arg(long)]
    pub logits_dir: Option<PathBuf>,
    /// Load a model from a GGUF file instead of generating it in memory: NAME=PATH, the file
    /// written by `kiln synth` for the same spec (checked against it). Repeatable.
    #[arg(long = "model-file", value_name = "NAME=PATH")]
    pub model_files: Vec<String>,
    /// Skip a model's remaining (longer) lengths once one prefill takes longer than this.
    #[arg(long, default_value_t = 60.0)]
    pub skip_after_s: f64,
    /// Start no new (model, length) after this many seconds, or when its predicted time would
    /// pass it (0: no limit). Skipped rows are recorded as such.
    #[arg(long, default_value_t = 0.0)]
    pub deadline_s: f64,
    /// Peak bf16 tensor rate the achieved TFLOP/s is compared with.
    #[arg(long, default_value_t = 798.0)]
    pub peak_tflops: f64,
    /// Peak memory bandwidth (TB/s) the weight-read rate is compared with.
    #[arg(long, default_value_t = 3.0)]
    pub peak_tbs: f64,
}

/// One model of the benchmark.
struct BenchModel {
    name: &'static str,
    spec: SynthSpec,
}

fn model_named(name: &str, layers: usize, seed: u64) -> anyhow::Result<BenchModel> {
    let (name, preset, n_layer) = match name {
        "tiny" => ("tiny", Preset::Tiny, 2),
        "30b" => ("30b", Preset::Qwen3_30bA3b, layers),
        other => bail!("unknown bench model {other:?} (tiny, 30b)"),
    };
    Ok(BenchModel {
        name,
        spec: SynthSpec {
            arch: Arch::Qwen3Moe,
            preset,
            n_layer,
            dtype: GgmlType::BF16,
            seed,
        },
    })
}

/// FLOPs of one prefill of `n` tokens, by part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flops {
    /// Q, K, V and output projections.
    pub attn_proj: f64,
    /// QKᵀ and PV over the causal triangle.
    pub attention: f64,
    /// Router (and shared-expert gate) logits.
    pub router: f64,
    /// Routed (top-k) experts, dense FFN, shared expert.
    pub ffn: f64,
    /// LM head for the last position.
    pub lm_head: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.attn_proj + self.attention + self.router + self.ffn + self.lm_head
    }
}

/// 2 FLOPs per weight touched per token for the GEMMs (only the `n_expert_used` routed
/// experts), 4·n²/2·n_head·head_dim per layer for causal attention, and the LM head once.
pub fn prefill_flops(cfg: &ModelConfig, n: usize) -> Flops {
    let (n, l) = (n as f64, cfg.n_layer as f64);
    let (h, qd, kvd) = (cfg.hidden as f64, cfg.q_dim() as f64, cfg.kv_dim() as f64);
    let mut router = 0.0;
    let mut ffn = 0.0;
    if cfg.arch.is_moe() {
        router += h * cfg.n_expert as f64;
        ffn += cfg.n_expert_used as f64 * 3.0 * h * cfg.ff_exp as f64;
    } else {
        ffn += 3.0 * h * cfg.ff as f64;
    }
    if cfg.ff_shexp > 0 {
        router += h;
        ffn += 3.0 * h * cfg.ff_shexp as f64;
    }
    Flops {
        attn_proj: 2.0 * n * l * (h * qd + 2.0 * h * kvd + qd * h),
        attention: l * 4.0 * n * n / 2.0 * (cfg.n_head * cfg.head_dim) as f64,
        router: 2.0 * n * l * router,
        ffn: 2.0 * n * l * ffn,
        lm_head: 2.0 * h * cfg.vocab as f64,
    }
}

/// Experts a prompt of `n` tokens is expected to reach with uniform top-k routing:
/// E·(1 − (1 − k/E)ⁿ).
pub fn expected_experts_hit(cfg: &ModelConfig, n: usize) -> f64 {
    let e = cfg.n_expert as f64;
    if e == 0.0 {
        return 0.0;
    }
    let k = cfg.n_expert_used as f64;
    e * (1.0 - (1.0 - k / e).powf(n as f64))
}

/// Bytes of weights one prefill of `n` tokens reads, as stored on the GPU (matrices bf16,
/// vectors and the router f32): every layer's attention and norm weights, the experts it is
/// expected to reach, the final norm, the whole LM head, and n rows of the embedding table.
pub fn weight_bytes_read(cfg: &ModelConfig, n: usize) -> f64 {
    let (h, qd, kvd, hd) = (
        cfg.hidden as f64,
        cfg.q_dim() as f64,
        cfg.kv_dim() as f64,
        cfg.head_dim as f64,
    );
    let mut layer = 2.0 * (h * qd + 2.0 * h * kvd + qd * h) + 4.0 * 2.0 * h;
    if cfg.qk_norm {
        layer += 4.0 * 2.0 * hd;
    }
    if cfg.qkv_bias {
        layer += 4.0 * (qd + 2.0 * kvd);
    }
    if cfg.arch.is_moe() {
        layer += 4.0 * h * cfg.n_expert as f64;
        layer += expected_experts_hit(cfg, n) * 2.0 * 3.0 * h * cfg.ff_exp as f64;
    } else {
        layer += 2.0 * 3.0 * h * cfg.ff as f64;
    }
    if cfg.ff_shexp > 0 {
        layer += 2.0 * 3.0 * h * cfg.ff_shexp as f64 + 4.0 * h;
    }
    cfg.n_layer as f64 * layer + 4.0 * h + 2.0 * h * cfg.vocab as f64 + 2.0 * n as f64 * h
}

/// The prompt of `n` ids for a model with `vocab` tokens (the same ids for a given seed, n and
/// vocab, whatever else runs).
pub fn prompt_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed ^ 0x6B69_6C6E_6265_6E63 ^ (n as u64).wrapping_mul(0x9E37_79B9));
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

// ---- JSON (hand-written: kiln has no serde dependency) ------------------------------------

/// A JSON value; numbers that are not finite are written as null.
#[derive(Clone, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Int(i64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn obj(pairs: Vec<(&str, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
    fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }
    fn int(v: impl TryInto<i64>) -> Json {
        v.try_into().map(Json::Int).unwrap_or(Json::Null)
    }
    fn opt_str(s: Option<impl Into<String>>) -> Json {
        s.map(|s| Json::Str(s.into())).unwrap_or(Json::Null)
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, Json::Arr(_) | Json::Obj(_))
    }

    /// Pretty-printed, except that arrays of scalars stay on one line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(v) if v.is_finite() => {
                let _ = write!(out, "{v}");
            }
            Json::Num(_) => out.push_str("null"),
            Json::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Json::Str(s) => write_json_string(out, s),
            Json::Arr(items) if items.iter().all(Json::is_scalar) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write(out, indent);
                }
                out.push(']');
            }
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    pad(out, indent + 2);
                    v.write(out, indent + 2);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push(']');
            }
            Json::Obj(pairs) if pairs.is_empty() => out.push_str("{}"),
            Json::Obj(pairs) => {
                out.push_str("{\n");
                for (i, (k, v)) in pairs.iter().enumerate() {
                    pad(out, indent + 2);
                    write_json_string(out, k);
                    out.push_str(": ");
                    v.write(out, indent + 2);
                    out.push_str(if i + 1 < pairs.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push('}');
            }
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---- the run -------------------------------------------------------------------------------

/// One (model, length) row.
struct Row {
    model: &'static str,
    n: usize,
    /// "ok", "skipped" or "error".
    status: &'static str,
    reason: Option<String>,
    times_ms: Vec<f64>,
    warmup_ms: f64,
    launches: u64,
    chunks: usize,
    flops: Flops,
    weight_bytes: f64,
    profile_ms: f64,
    stages: Vec<(&'static str, f64)>,
    logits_npy: Option<PathBuf>,
    top1: Option<(usize, f32)>,
}

impl Row {
    fn new(model: &'static str, n: usize, cfg: &ModelConfig) -> Self {
        Row {
            model,
            n,
            status: "ok",
            reason: None,
            times_ms: Vec::new(),
            warmup_ms: f64::NAN,
            launches: 0,
            chunks: 0,
            flops: prefill_flops(cfg, n),
            weight_bytes: weight_bytes_read(cfg, n),
            profile_ms: f64::NAN,
            stages: Vec::new(),
            logits_npy: None,
            top1: None,
        }
    }

    fn not_run(mut self, status: &'static str, reason: String) -> Self {
        self.status = status;
        self.reason = Some(reason);
        self
    }

    fn median_ms(&self) -> f64 {
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

/// A model as the bench uses it: the config (context raised to the longest prompt) and where
/// it came from.
struct Loaded {
    cfg: ModelConfig,
    gpu: GpuModel,
    source: String,
    build_s: f64,
    upload_s: f64,
    resident_bytes: u64,
}

fn open_model(
    dev: &Device,
    m: &BenchModel,
    file: Option<&Path>,
    max_len: usize,
) -> anyhow::Result<Loaded> {
    let t = Instant::now();
    let (gguf, source) = match file {
        Some(p) => (
            GgufFile::open(p).with_context(|| format!("reading {}", p.display()))?,
            format!("file {}", p.display()),
        ),
        None => {
            let bytes = synth::to_bytes(&m.spec)
                .with_context(|| format!("generating the {} model", m.name))?;
            (
                GgufFile::from_bytes(bytes)?,
                "synthetic, generated in memory".to_string(),
            )
        }
    };
    let mut cfg = ModelConfig::from_gguf(&gguf)
        .with_context(|| format!("reading the config of the {} model", m.name))?;
    let mut want = synth::config(&m.spec);
    want.ctx = cfg.ctx;
    if cfg != want || (file.is_some() && !same_seed(&gguf, &m.spec)?) {
        bail!(
            "{source} is not the {} model the bench describes ({} {}, {} layers, {}, seed {}): \
             write it with `kiln synth --arch qwen3moe --preset {} --layers {} --dtype BF16 \
             --seed {}`",
            m.name,
            m.spec.preset.name(),
            m.spec.arch,
            m.spec.n_layer,
            m.spec.dtype,
            m.spec.seed,
            m.spec.preset.name(),
            m.spec.n_layer,
            m.spec.seed
        );
    }
    // RoPE needs no table sized by the context, so the longest prompt only needs ctx ≥ N.
    cfg.ctx = cfg.ctx.max(max_len);
    let weights = Weights::load(&gguf, &cfg)
        .with_context(|| format!("loading the weights of the {} model", m.name))?;
    let resident_bytes = weights
        .tensors()
        .iter()
        .map(|t| {
            let elem = if t.shape.len() >= 2 && !t.name.contains("ffn_gate_inp") {
                2
            } else {
                4
            };
            t.data.len() as u64 * elem
        })
        .sum();
    drop(gguf);
    let build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let gpu = GpuModel::upload(dev, &cfg, &weights, &|_| {})
        .with_context(|| format!("uploading the {} model to {}", m.name, dev.name()))?;
    dev.synchronize()?;
    let upload_s = t.elapsed().as_secs_f64();
    Ok(Loaded {
        cfg,
        gpu,
        source,
        build_s,
        upload_s,
        resident_bytes,
    })
}

/// Whether a file holds the spec's weights, judged by one small tensor (the final norm, F32 in
/// every synthetic file) against the values `synth` draws for it.
fn same_seed(gguf: &GgufFile, spec: &SynthSpec) -> anyhow::Result<bool> {
    const NAME: &str = "output_norm.weight";
    let writer = synth::build_writer(spec)?;
    let (index, desc) = writer
        .tensors()
        .iter()
        .enumerate()
        .find(|(_, d)| d.name == NAME)
        .ok_or_else(|| anyhow!("the synthetic spec has no {NAME}"))?;
    Ok(gguf.dequantize_f32(NAME)? == synth::tensor_values(spec.seed, index, desc))
}

/// One prefill, timed on the host after synchronising.
fn timed(
    model: &GpuModel,
    dev: &Device,
    tokens: &[u32],
    opts: &PrefillOptions,
) -> anyhow::Result<(f64, PrefillOutput)> {
    dev.synchronize()?;
    let t = Instant::now();
    let out = prefill(model, dev, tokens, opts)?;
    dev.synchronize()?;
    Ok((t.elapsed().as_secs_f64() * 1e3, out))
}

fn run_row(
    args: &BenchArgs,
    dev: &Device,
    m: &Loaded,
    row: &mut Row,
    tokens: &[u32],
) -> anyhow::Result<()> {
    let opts = PrefillOptions::default();
    // The warm-up keeps module load and first-touch costs out of the timed runs; the emulator
    // has none, and each of its runs takes seconds, so it goes straight to the timed runs.
    let mut repeats = args.repeats.max(1);
    let mut last = None;
    if dev.is_cuda() {
        let (warm_ms, warm) = timed(&m.gpu, dev, tokens, &opts).context("warm-up prefill")?;
        row.warmup_ms = warm_ms;
        last = Some(warm);
        // A slow length gets one timed run rather than blowing the time budget.
        if warm_ms / 1e3 * repeats as f64 > args.skip_after_s {
            repeats = 1;
        }
    }
    for i in 0..repeats {
        let (ms, out) = timed(&m.gpu, dev, tokens, &opts).with_context(|| format!("repeat {i}"))?;
        row.times_ms.push(ms);
        last = Some(out);
    }
    let last = last.ok_or_else(|| anyhow!("no prefill ran"))?;
    row.launches = last.launches;
    row.chunks = last.chunks.len();
    if last.chunks != [tokens.len()] {
        bail!(
            "expected one chunk of {} tokens, ran {:?}",
            tokens.len(),
            last.chunks
        );
    }
    let logits = &last.logits;
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        bail!("logit {i} is {} (not finite)", logits[i]);
    }
    row.top1 = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, &v)| (i, v));
    if let Some(dir) = &args.logits_dir {
        let p = dir.join(format!("logits-{}-{}.npy", row.model, row.n));
        npy::write_f32(&p, &[logits.len()], logits)?;
        row.logits_npy = Some(p);
    }
    let profile = PrefillOptions {
        profile: true,
        ..PrefillOptions::default()
    };
    let (pms, pout) = timed(&m.gpu, dev, tokens, &profile).context("profiled prefill")?;
    row.profile_ms = pms;
    row.stages = pout.stage_seconds;
    Ok(())
}

/// Attaches to the device the arguments ask for, with a one-line error when there is none.
fn open_device(d: DeviceArg) -> anyhow::Result<Device> {
    let no_gpu =
        |e| anyhow!("kiln bench needs a CUDA GPU ({e}); use --device emulator for a CPU smoke run");
    match d {
        DeviceArg::Emulator => Ok(Device::emulator()),
        DeviceArg::Cuda => Device::cuda().map_err(no_gpu),
        DeviceArg::Auto => Ok(Device::cuda().unwrap_or_else(|e| {
            eprintln!("device: the CPU emulator (a smoke run), since {e}");
            Device::emulator()
        })),
        DeviceArg::Cpu => bail!(
            "kiln bench measures the GPU pipeline, which --device cpu does not run; use --device \
             emulator for a CPU smoke run of it"
        ),
    }
}

fn git_commit() -> Option<String> {
    std::env::var("KILN_GIT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| option_env!("KILN_GIT").map(str::to_string))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let dev = open_device(args.device)?;
    let emulator = !dev.is_cuda();
    let model_names = args.models.clone().unwrap_or_else(|| {
        if emulator {
            vec!["tiny".into()]
        } else {
            vec!["tiny".into(), "30b".into()]
        }
    });
    let mut lengths = args.lengths.clone().unwrap_or_else(|| {
        if emulator {
            vec![8]
        } else {
            vec![512, 2048, 4096, 8192]
        }
    });
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.is_empty() || lengths[0] == 0 {
        bail!("--lengths needs positive prompt lengths");
    }
    if args.layers == 0 {
        bail!("--layers must be at least 1");
    }
    let models = model_names
        .iter()
        .map(|n| model_named(n.trim(), args.layers, args.seed))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if emulator {
        if let Some(m) = models.iter().find(|m| m.spec.preset != Preset::Tiny) {
            bail!(
                "the emulator runs only the tiny model (asked for {}): it executes every GPU \
                 thread on the CPU",
                m.name
            );
        }
        let longest = lengths[lengths.len() - 1];
        if longest > EMULATOR_MAX_LEN {
            bail!(
                "the emulator runs prompts of at most {EMULATOR_MAX_LEN} tokens (asked for \
                 {longest})"
            );
        }
    }
    let mut files = Vec::new();
    for spec in &args.model_files {
        let (name, path) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--model-file {spec:?}: expected NAME=PATH"))?;
        if !models.iter().any(|m| m.name == name) {
            bail!("--model-file {spec:?}: {name} is not among the models run (--models)");
        }
        files.push((name.to_string(), PathBuf::from(path)));
    }
    let prompts_path = args.prompts.clone().unwrap_or_else(|| {
        args.json
            .parent()
            .unwrap_or(Path::new(""))
            .join("prompts.json")
    });
    if let Some(dir) = &args.logits_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let run = RunInfo {
        start,
        device_name: dev.name(),
        emulator,
        mem: dev.memory_info().ok(),
        lengths: lengths.clone(),
        prompts_path,
    };
    println!(
        "kiln bench on {}: models {}, lengths {:?}, {} repeats (median), seed {}",
        run.device_name,
        model_names.join(","),
        lengths,
        args.repeats,
        args.seed
    );

    let deadline_hit = |extra_s: f64| {
        args.deadline_s > 0.0 && start.elapsed().as_secs_f64() + extra_s > args.deadline_s
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut model_json = Vec::new();
    let mut prompt_json = Vec::new();
    for m in &models {
        let cfg0 = synth::config(&m.spec);
        if deadline_hit(0.0) {
            for &n in &lengths {
                rows.push(Row::new(m.name, n, &cfg0).not_run(
                    "skipped",
                    format!("the {:.0} s deadline had passed", args.deadline_s),
                ));
            }
            continue;
        }
        let file = files.iter().find(|(n, _)| n == m.name).map(|(_, p)| p);
        eprintln!(
            "{}: {} ...",
            m.name,
            match file {
                Some(p) => format!("loading {}", p.display()),
                None => "generating the synthetic weights".to_string(),
            }
        );
        let longest = lengths[lengths.len() - 1];
        let loaded = match open_model(&dev, m, file.map(PathBuf::as_path), longest) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("{}: {msg}", m.name);
                for &n in &lengths {
                    rows.push(Row::new(m.name, n, &cfg0).not_run("error", msg.clone()));
                }
                model_json.push(Json::obj(vec![
                    ("name", Json::str(m.name)),
                    ("error", Json::str(msg)),
                ]));
                write_reports(args, &run, &rows, &model_json, &prompt_json, false)?;
                continue;
            }
        };
        let cfg = &loaded.cfg;
        eprintln!(
            "{}: ready ({:.1} s to build/load, {:.1} s to upload, {:.2} GB resident)",
            m.name,
            loaded.build_s,
            loaded.upload_s,
            loaded.resident_bytes as f64 / 1e9
        );
        model_json.push(Json::obj(vec![
            ("name", Json::str(m.name)),
            ("source", Json::str(loaded.source.clone())),
            ("preset", Json::str(m.spec.preset.name())),
            ("arch", Json::str(m.spec.arch.name())),
            ("dtype", Json::str(m.spec.dtype.name())),
            ("seed", Json::int(m.spec.seed)),
            ("config", config_json(cfg)),
            ("resident_weight_bytes", Json::int(loaded.resident_bytes)),
            ("build_seconds", Json::Num(loaded.build_s)),
            ("upload_seconds", Json::Num(loaded.upload_s)),
        ]));
        let prompts: Vec<(String, Json)> = lengths
            .iter()
            .map(|&n| {
                let ids = prompt_ids(args.seed, n, cfg.vocab);
                (
                    n.to_string(),
                    Json::Arr(ids.iter().map(|&t| Json::int(t)).collect()),
                )
            })
            .collect();
        prompt_json.push((
            m.name.to_string(),
            Json::Obj(vec![
                ("vocab".to_string(), Json::int(cfg.vocab)),
                ("lengths".to_string(), Json::Obj(prompts)),
            ]),
        ));
        let mut skip: Option<String> = None;
        let mut prev: Option<(usize, f64)> = None;
        for &n in &lengths {
            let tokens = prompt_ids(args.seed, n, cfg.vocab);
            let row = Row::new(m.name, n, cfg);
            if let Some(why) = &skip {
                rows.push(row.not_run("skipped", why.clone()));
                continue;
            }
            // Predict from the previous length, conservatively as if all of it scaled as n².
            let predicted_s = prev.map_or(0.0, |(pn, ms)| {
                let r = n as f64 / pn as f64;
                ms / 1e3 * r * r * (args.repeats as f64 + 2.0)
            });
            if deadline_hit(predicted_s) {
                let why = format!(
                    "the {:.0} s deadline (predicted {predicted_s:.1} s more)",
                    args.deadline_s
                );
                rows.push(row.not_run("skipped", why));
                continue;
            }
            let mut row = row;
            eprint!("{} N={n}: ", m.name);
            match run_row(args, &dev, &loaded, &mut row, &tokens) {
                Ok(()) => {
                    let med = row.median_ms();
                    eprintln!("{med:.2} ms median of {}", row.times_ms.len());
                    prev = Some((n, med));
                    if row.warmup_ms.max(med) / 1e3 > args.skip_after_s {
                        skip = Some(format!(
                            "N={n} took {:.1} s, over --skip-after-s {}",
                            row.warmup_ms.max(med) / 1e3,
                            args.skip_after_s
                        ));
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    eprintln!("error: {msg}");
                    row.status = "error";
                    row.reason = Some(msg.clone());
                    // A failure at one length (out of memory, say) makes longer ones pointless.
                    skip = Some(format!("N={n} failed: {msg}"));
                }
            }
            rows.push(row);
            write_reports(args, &run, &rows, &model_json, &prompt_json, false)?;
        }
        drop(loaded);
    }

    print_table(&rows, args);
    write_reports(args, &run, &rows, &model_json, &prompt_json, true)?;
    let total_s = start.elapsed().as_secs_f64();
    let prompts_path = &run.prompts_path;
    println!(
        "wrote {} and {} ({total_s:.1} s)",
        args.json.display(),
        prompts_path.display()
    );
    let failed = rows.iter().filter(|r| r.status == "error").count();
    if failed > 0 {
        bail!(
            "{failed} of {} runs failed (see {})",
            rows.len(),
            args.json.display()
        );
    }
    Ok(())
}

/// What every report of one run shares.
struct RunInfo {
    start: Instant,
    device_name: String,
    emulator: bool,
    mem: Option<(usize, usize)>,
    lengths: Vec<usize>,
    prompts_path: PathBuf,
}

/// Writes bench.json and prompts.json as they stand (after every row, so a run stopped by a
/// time limit still leaves its figures; `complete` says whether it finished).
fn write_reports(
    args: &BenchArgs,
    run: &RunInfo,
    rows: &[Row],
    model_json: &[Json],
    prompt_json: &[(String, Json)],
    complete: bool,
) -> anyhow::Result<()> {
    let doc = Json::obj(vec![
        ("tool", Json::str("kiln bench")),
        ("kiln_version", Json::str(env!("CARGO_PKG_VERSION"))),
        ("git_commit", Json::opt_str(git_commit())),
        ("device", Json::str(run.device_name.clone())),
        (
            "backend",
            Json::str(if run.emulator { "emulator" } else { "cuda" }),
        ),
        (
            "device_memory",
            match run.mem {
                Some((free, total)) if !run.emulator => Json::obj(vec![
                    ("free_bytes_at_start", Json::int(free)),
                    ("total_bytes", Json::int(total)),
                ]),
                _ => Json::Null,
            },
        ),
        (
            "roofline",
            Json::obj(vec![
                ("bf16_tflops", Json::Num(args.peak_tflops)),
                ("bandwidth_tbs", Json::Num(args.peak_tbs)),
            ]),
        ),
        (
            "settings",
            Json::obj(vec![
                ("repeats", Json::int(args.repeats)),
                ("seed", Json::int(args.seed)),
                (
                    "lengths",
                    Json::Arr(run.lengths.iter().map(|&n| Json::int(n)).collect()),
                ),
                ("skip_after_s", Json::Num(args.skip_after_s)),
                ("deadline_s", Json::Num(args.deadline_s)),
                (
                    "prefill_options",
                    Json::str("default: one chunk, last logits only"),
                ),
                ("prompts", Json::str(run.prompts_path.display().to_string())),
            ]),
        ),
        (
            "formulas",
            Json::obj(vec![
                (
                    "gemm_flops",
                    Json::str(
                        "2 * N * n_layer * (weights touched per token: q,k,v,o + router + top-k experts' gate,up,down)",
                    ),
                ),
                (
                    "attention_flops",
                    Json::str("n_layer * 4 * N^2/2 * n_head * head_dim"),
                ),
                (
                    "lm_head_flops",
                    Json::str("2 * hidden * vocab (last position only)"),
                ),
                (
                    "weight_bytes",
                    Json::str(
                        "bf16 matrices + f32 vectors/router read once: all layers, expected experts hit E*(1-(1-k/E)^N), LM head, N embedding rows",
                    ),
                ),
            ]),
        ),
        ("models", Json::Arr(model_json.to_vec())),
        (
            "results",
            Json::Arr(rows.iter().map(|r| row_json(r, args)).collect()),
        ),
        (
            "total_seconds",
            Json::Num(run.start.elapsed().as_secs_f64()),
        ),
        ("complete", Json::Bool(complete)),
    ]);
    write_file(&args.json, &doc.render())?;
    let prompts_doc = Json::obj(vec![
        ("seed", Json::int(args.seed)),
        ("models", Json::Obj(prompt_json.to_vec())),
        (
            "logits_dir",
            Json::opt_str(args.logits_dir.as_ref().map(|d| d.display().to_string())),
        ),
    ]);
    write_file(&run.prompts_path, &prompts_doc.render())?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn config_json(c: &ModelConfig) -> Json {
    Json::obj(vec![
        ("n_layer", Json::int(c.n_layer)),
        ("hidden", Json::int(c.hidden)),
        ("n_head", Json::int(c.n_head)),
        ("n_head_kv", Json::int(c.n_head_kv)),
        ("head_dim", Json::int(c.head_dim)),
        ("n_expert", Json::int(c.n_expert)),
        ("n_expert_used", Json::int(c.n_expert_used)),
        ("ff_exp", Json::int(c.ff_exp)),
        ("vocab", Json::int(c.vocab)),
        ("ctx", Json::int(c.ctx)),
        // Through the shortest decimal of the f32, so 1e-6 is written as 1e-6.
        ("rope_base", Json::Num(f32_to_f64(c.rope_base))),
        ("eps", Json::Num(f32_to_f64(c.eps))),
        ("norm_topk", Json::Bool(c.norm_topk)),
    ])
}

fn f32_to_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn row_json(r: &Row, args: &BenchArgs) -> Json {
    let med = r.median_ms();
    let secs = med / 1e3;
    let tflops = r.flops.total() / secs / 1e12;
    let tbs = r.weight_bytes / secs / 1e12;
    let prof_total: f64 = r.stages.iter().map(|(_, s)| s).sum();
    Json::obj(vec![
        ("model", Json::str(r.model)),
        ("n", Json::int(r.n)),
        ("status", Json::str(r.status)),
        ("reason", Json::opt_str(r.reason.clone())),
        ("warmup_ms", Json::Num(r.warmup_ms)),
        (
            "times_ms",
            Json::Arr(r.times_ms.iter().map(|&t| Json::Num(t)).collect()),
        ),
        ("median_ms", Json::Num(med)),
        (
            "min_ms",
            Json::Num(r.times_ms.iter().copied().fold(f64::NAN, f64::min)),
        ),
        (
            "max_ms",
            Json::Num(r.times_ms.iter().copied().fold(f64::NAN, f64::max)),
        ),
        ("tokens_per_s", Json::Num(r.n as f64 / secs)),
        ("launches", Json::int(r.launches)),
        ("chunks", Json::int(r.chunks)),
        (
            "flops",
            Json::obj(vec![
                ("attn_proj", Json::Num(r.flops.attn_proj)),
                ("attention", Json::Num(r.flops.attention)),
                ("router", Json::Num(r.flops.router)),
                ("ffn", Json::Num(r.flops.ffn)),
                ("lm_head", Json::Num(r.flops.lm_head)),
                ("total", Json::Num(r.flops.total())),
            ]),
        ),
        ("tflops", Json::Num(tflops)),
        (
            "pct_of_peak_tflops",
            Json::Num(100.0 * tflops / args.peak_tflops),
        ),
        ("weight_bytes", Json::Num(r.weight_bytes)),
        ("weight_tbs", Json::Num(tbs)),
        (
            "pct_of_peak_bandwidth",
            Json::Num(100.0 * tbs / args.peak_tbs),
        ),
        (
            "top1",
            match r.top1 {
                Some((i, v)) => {
                    Json::obj(vec![("id", Json::int(i)), ("logit", Json::Num(v as f64))])
                }
                None => Json::Null,
            },
        ),
        (
            "logits_npy",
            Json::opt_str(r.logits_npy.as_ref().map(|p| p.display().to_string())),
        ),
        (
            "profile",
            if r.stages.is_empty() {
                Json::Null
            } else {
                Json::obj(vec![
                    ("wall_ms", Json::Num(r.profile_ms)),
                    ("stages_ms_total", Json::Num(prof_total * 1e3)),
                    (
                        "stages",
                        Json::Arr(
                            r.stages
                                .iter()
                                .map(|(name, s)| {
                                    Json::obj(vec![
                                        ("stage", Json::str(*name)),
                                        ("ms", Json::Num(s * 1e3)),
                                        ("pct", Json::Num(100.0 * s / prof_total)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ])
            },
        ),
    ])
}

fn print_table(rows: &[Row], args: &BenchArgs) {
    println!(
        "\n{:<6} {:>6} {:>10} {:>11} {:>8} {:>8} {:>7} {:>7} {:>6}",
        "model", "N", "median ms", "tokens/s", "launches", "TFLOP/s", "%peak", "TB/s", "%bw"
    );
    for r in rows {
        if r.status != "ok" {
            println!(
                "{:<6} {:>6} {}: {}",
                r.model,
                r.n,
                r.status,
                r.reason.as_deref().unwrap_or("")
            );
            continue;
        }
        let med = r.median_ms();
        let secs = med / 1e3;
        let tflops = r.flops.total() / secs / 1e12;
        let tbs = r.weight_bytes / secs / 1e12;
        println!(
            "{:<6} {:>6} {:>10.3} {:>11.0} {:>8} {:>8.2} {:>6.2}% {:>7.3} {:>5.1}%",
            r.model,
            r.n,
            med,
            r.n as f64 / secs,
            r.launches,
            tflops,
            100.0 * tflops / args.peak_tflops,
            tbs,
            100.0 * tbs / args.peak_tbs
        );
    }
    for r in rows.iter().filter(|r| !r.stages.is_empty()) {
        let total: f64 = r.stages.iter().map(|(_, s)| s).sum();
        let parts: Vec<String> = r
            .stages
            .iter()
            .map(|(n, s)| format!("{n} {:.0}%", 100.0 * s / total))
            .collect();
        println!(
            "  profile {} N={} ({:.2} ms synchronised): {}",
            r.model,
            r.n,
            r.profile_ms,
            parts.join(" | ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_of_the_30b_model_at_one_token() {
        let mut cfg = synth::config(&SynthSpec {
            arch: Arch::Qwen3Moe,
            preset: Preset::Qwen3_30bA3b,
            n_layer: 1,
            dtype: GgmlType::BF16,
            seed: 0,
        });
        cfg.n_layer = 48;
        // Qwen3-30B-A3B activates about 3.3B parameters per token (attention 48·18.9M,
        // experts 48·8·4.7M, LM head 311M): 2 FLOPs each, attention scores aside.
        let f = prefill_flops(&cfg, 1);
        let active = (f.total() - f.attention) / 2.0;
        assert!((2.9e9..3.4e9).contains(&active), "{active:e}");
        let f2 = prefill_flops(&cfg, 2);
        assert_eq!(f2.attention, 4.0 * f.attention);
    }

    #[test]
    fn json_escapes_and_keeps_scalar_arrays_inline() {
        let j = Json::obj(vec![
            ("s", Json::str("a\"b\\c\n\u{1}")),
            ("xs", Json::Arr(vec![Json::int(1), Json::Num(f64::NAN)])),
        ]);
        assert_eq!(
            j.render(),
            "{\n  \"s\": \"a\\\"b\\\\c\\n\\u0001\",\n  \"xs\": [1, null]\n}\n"
        );
    }

    #[test]
    fn prompts_are_reproducible_and_in_range() {
        let a = prompt_ids(3, 100, 512);
        assert_eq!(a, prompt_ids(3, 100, 512));
        assert_ne!(a, prompt_ids(4, 100, 512));
        assert!(a.iter().all(|&t| t < 512));
    }
}
