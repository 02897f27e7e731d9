//! The bench run: each model built (or loaded from its `kiln synth` file) and uploaded once,
//! then each prompt length timed, with skips for lengths that would blow the time budget.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};

use super::catalogue::{BenchModel, prompt_ids};
use super::cost::ExpertCensus;
use super::report::{self, ModelPrompts, ModelRecord, Ordered, Row, RunInfo, Status};
use crate::cli::output::{note, outln};
use crate::gguf::GgufFile;
use crate::gpu::Device;
use crate::model::{ModelConfig, Weights};
use crate::npy;
use crate::pipeline::{GpuModel, PrefillOptions, PrefillOutput, prefill};
use crate::synth::{self, SynthSpec};

/// A checked request for a run (the CLI builds it from its arguments).
#[derive(Clone, Debug)]
pub struct Settings {
    pub models: Vec<BenchModel>,
    /// Ascending, distinct, positive.
    pub lengths: Vec<usize>,
    /// Timed prefills per (model, length); the median is reported.
    pub repeats: usize,
    /// Seed of the prompt ids (the models carry their own).
    pub seed: u64,
    pub json: PathBuf,
    pub prompts: PathBuf,
    pub logits_dir: Option<PathBuf>,
    /// (model name, GGUF path): load that model from a file instead of generating it.
    pub model_files: Vec<(String, PathBuf)>,
    /// Generate the weights of models without a file on the GPU (`GpuModel::synthetic`:
    /// seconds at any depth) instead of on the host (`kiln synth`'s weights, which a file
    /// written by `kiln synth` holds too, so the PyTorch peer can load the same model).
    pub weights_on_gpu: bool,
    /// Skip a model's longer lengths once one prefill takes longer than this.
    pub skip_after_s: f64,
    /// Start no new (model, length) past this many seconds (0: no limit).
    pub deadline_s: f64,
    pub peak_tflops: f64,
    /// `None`: measure a device copy (`copy_bandwidth`) at the start of the run.
    pub peak_tbs: Option<f64>,
}

/// A model as the bench uses it: the config (context raised to the longest prompt), the
/// uploaded weights and where they came from.
struct Loaded {
    cfg: ModelConfig,
    gpu: GpuModel,
    source: String,
    build_s: f64,
    upload_s: f64,
}

fn open_model(
    dev: &Device,
    m: &BenchModel,
    file: Option<&Path>,
    (max_len, on_gpu): (usize, bool),
) -> anyhow::Result<Loaded> {
    if on_gpu && file.is_none() {
        return generate_on_gpu(dev, m, max_len);
    }
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
        let s = &m.spec;
        bail!(
            "{source} is not the {} model the bench describes ({} {}, {} layers, {}, seed {}): \
             write it with `kiln synth --arch qwen3moe --preset {} --layers {} --dtype BF16 \
             --seed {}`",
            m.name,
            s.preset.name(),
            s.arch,
            s.n_layer,
            s.dtype,
            s.seed,
            s.preset.name(),
            s.n_layer,
            s.seed
        );
    }
    // RoPE needs no table sized by the context, so the longest prompt only needs ctx ≥ N.
    cfg.ctx = cfg.ctx.max(max_len);
    let weights = Weights::load(&gguf, &cfg)
        .with_context(|| format!("loading the weights of the {} model", m.name))?;
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
    })
}

/// The model with weights drawn on the GPU from the spec's seed (the same bits every run, but
/// not the values `kiln synth` writes).
fn generate_on_gpu(dev: &Device, m: &BenchModel, max_len: usize) -> anyhow::Result<Loaded> {
    let mut cfg = synth::config(&m.spec);
    cfg.ctx = cfg.ctx.max(max_len);
    let t = Instant::now();
    let gpu = GpuModel::synthetic(dev, &cfg, m.spec.seed)
        .with_context(|| format!("generating the {} model on {}", m.name, dev.name()))?;
    dev.synchronize()?;
    Ok(Loaded {
        cfg,
        gpu,
        source: format!(
            "synthetic, generated on the GPU (seed {}; not the weights `kiln synth` writes)",
            m.spec.seed
        ),
        build_s: 0.0,
        upload_s: t.elapsed().as_secs_f64(),
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
    s: &Settings,
    dev: &Device,
    m: &Loaded,
    row: &mut Row,
    tokens: &[u32],
) -> anyhow::Result<()> {
    let opts = PrefillOptions::default();
    // The warm-up keeps module load and first-touch costs out of the timed runs; the emulator
    // has none, so it goes straight to the timed runs.
    let mut repeats = s.repeats.max(1);
    let mut last = None;
    if dev.is_cuda() {
        let (warm_ms, warm) = timed(&m.gpu, dev, tokens, &opts).context("warm-up prefill")?;
        row.warmup_ms = warm_ms;
        last = Some(warm);
        // A slow length gets one timed run rather than blowing the time budget.
        if warm_ms / 1e3 * repeats as f64 > s.skip_after_s {
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
    if let Some(dir) = &s.logits_dir {
        let p = dir.join(format!("logits-{}-{}.npy", row.model, row.n));
        npy::write_f32(&p, &[logits.len()], logits)?;
        row.logits_npy = Some(p);
    }
    let profile = PrefillOptions {
        profile: true,
        expert_census: true,
        ..PrefillOptions::default()
    };
    let (pms, pout) = timed(&m.gpu, dev, tokens, &profile).context("profiled prefill")?;
    row.profile_ms = pms;
    row.stages = pout.stage_seconds;
    row.census = ExpertCensus::new(&m.cfg, row.n, pout.experts_reached);
    Ok(())
}

/// The device's copy rate in bytes per second, bytes read plus bytes written (the convention
/// of the H200's ≈ 4.2 TB/s): the median of 10 device-to-device copies of 1 GiB after one
/// untimed, and the 10 times (s). The bandwidth roofline of `kiln bench` and the decode bench.
pub fn copy_bandwidth(dev: &Device) -> anyhow::Result<(f64, Vec<f64>)> {
    const LEN: usize = 1 << 28; // u32 elements: 1 GiB
    let src = dev.alloc::<u32>(LEN, "copy-bandwidth source")?;
    let mut dst = dev.alloc::<u32>(LEN, "copy-bandwidth destination")?;
    dst.copy_from(&src, 0, 0, LEN)?;
    dev.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        dst.copy_from(&src, 0, 0, LEN)?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let bytes = 2.0 * (LEN * size_of::<u32>()) as f64;
    Ok((bytes / sorted[sorted.len() / 2], times))
}

/// Runs every (model, length) of `s` on `dev`, writing the reports after each row; fails
/// (after writing them) if any row failed.
pub fn run(s: &Settings, dev: &Device) -> anyhow::Result<()> {
    let start = Instant::now();
    if let Some(dir) = &s.logits_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let run = RunInfo {
        start,
        device_name: dev.name(),
        emulator: !dev.is_cuda(),
        mem: dev.memory_info().ok(),
        lengths: s.lengths.clone(),
        json_path: s.json.clone(),
        prompts_path: s.prompts.clone(),
        logits_dir: s.logits_dir.clone(),
        repeats: s.repeats,
        seed: s.seed,
        skip_after_s: s.skip_after_s,
        deadline_s: s.deadline_s,
        peak_tflops: s.peak_tflops,
        peak_tbs: match s.peak_tbs {
            Some(given) => (given, "given (--peak-tbs)"),
            None if dev.is_cuda() => (
                copy_bandwidth(dev)?.0 / 1e12,
                "measured in this run: device-to-device copy, read + written",
            ),
            None => (3.0, "nominal (the emulator has no bandwidth to measure)"),
        },
    };
    let names: Vec<&str> = s.models.iter().map(|m| m.name).collect();
    outln!(
        "kiln bench on {}: models {}, lengths {:?}, {} repeats (median), seed {}",
        run.device_name,
        names.join(","),
        s.lengths,
        s.repeats,
        s.seed
    )?;

    let deadline_hit =
        |extra_s: f64| s.deadline_s > 0.0 && start.elapsed().as_secs_f64() + extra_s > s.deadline_s;
    let mut rows: Vec<Row> = Vec::new();
    let mut models = Vec::new();
    let mut prompts = Ordered(Vec::new());
    let longest = s.lengths.last().copied().unwrap_or(0);
    for m in &s.models {
        let cfg0 = synth::config(&m.spec);
        if deadline_hit(0.0) {
            for &n in &s.lengths {
                let why = format!("the {:.0} s deadline had passed", s.deadline_s);
                rows.push(Row::new(m.name, n, &cfg0).not_run(Status::Skipped, why));
            }
            continue;
        }
        let file = s
            .model_files
            .iter()
            .find(|(n, _)| n == m.name)
            .map(|(_, p)| p);
        match file {
            Some(p) => note(format_args!("{}: loading {} ...", m.name, p.display())),
            None if s.weights_on_gpu => note(format_args!(
                "{}: generating SYNTHETIC weights on the GPU ...",
                m.name
            )),
            None => note(format_args!(
                "{}: generating the synthetic weights ...",
                m.name
            )),
        }
        let how = (longest, s.weights_on_gpu);
        let loaded = match open_model(dev, m, file.map(PathBuf::as_path), how) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("{e:#}");
                note(format_args!("{}: {msg}", m.name));
                for &n in &s.lengths {
                    rows.push(Row::new(m.name, n, &cfg0).not_run(Status::Error, msg.clone()));
                }
                models.push(ModelRecord::Failed {
                    name: m.name,
                    error: msg,
                });
                report::write_reports(&run, &rows, &models, &prompts, false)?;
                continue;
            }
        };
        let cfg = &loaded.cfg;
        let resident = loaded.gpu.device_bytes();
        note(format_args!(
            "{}: ready, weights {} ({:.1} s to build/load, {:.1} s to upload, {:.2} GB resident)",
            m.name,
            loaded.source,
            loaded.build_s,
            loaded.upload_s,
            resident as f64 / 1e9
        ));
        models.push(ModelRecord::Ready {
            name: m.name,
            source: loaded.source.clone(),
            preset: m.spec.preset.name(),
            arch: m.spec.arch.name(),
            dtype: m.spec.dtype.name(),
            seed: m.spec.seed,
            config: cfg.into(),
            resident_weight_bytes: resident,
            build_seconds: loaded.build_s,
            upload_seconds: loaded.upload_s,
        });
        prompts.0.push((
            m.name.to_string(),
            ModelPrompts {
                vocab: cfg.vocab,
                lengths: Ordered(
                    s.lengths
                        .iter()
                        .map(|&n| (n.to_string(), prompt_ids(s.seed, n, cfg.vocab)))
                        .collect(),
                ),
            },
        ));
        let mut skip: Option<String> = None;
        let mut prev: Option<(usize, f64)> = None;
        for &n in &s.lengths {
            let tokens = prompt_ids(s.seed, n, cfg.vocab);
            let mut row = Row::new(m.name, n, cfg);
            if let Some(why) = &skip {
                rows.push(row.not_run(Status::Skipped, why.clone()));
                continue;
            }
            // Predict from the previous length, conservatively as if all of it scaled as n².
            let predicted_s = prev.map_or(0.0, |(pn, ms)| {
                let r = n as f64 / pn as f64;
                ms / 1e3 * r * r * (s.repeats as f64 + 2.0)
            });
            if deadline_hit(predicted_s) {
                let why = format!(
                    "the {:.0} s deadline (predicted {predicted_s:.1} s more)",
                    s.deadline_s
                );
                rows.push(row.not_run(Status::Skipped, why));
                continue;
            }
            match run_row(s, dev, &loaded, &mut row, &tokens) {
                Ok(()) => {
                    let med = row.median_ms();
                    note(format_args!(
                        "{} N={n}: {} ms median of {}",
                        m.name,
                        report::sig3(med),
                        row.times_ms.len()
                    ));
                    prev = Some((n, med));
                    let slowest_s = row.warmup_ms.max(med) / 1e3;
                    if slowest_s > s.skip_after_s {
                        skip = Some(format!(
                            "N={n} took {slowest_s:.1} s, over --skip-after-s {}",
                            s.skip_after_s
                        ));
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    note(format_args!("{} N={n}: error: {msg}", m.name));
                    row.status = Status::Error;
                    row.reason = Some(msg.clone());
                    // A failure at one length (out of memory, say) makes longer ones pointless.
                    skip = Some(format!("N={n} failed: {msg}"));
                }
            }
            rows.push(row);
            report::write_reports(&run, &rows, &models, &prompts, false)?;
        }
    }

    report::print_table(&rows, &run)?;
    report::write_reports(&run, &rows, &models, &prompts, true)?;
    outln!(
        "wrote {} and {} ({:.1} s)",
        s.json.display(),
        s.prompts.display(),
        start.elapsed().as_secs_f64()
    )?;
    let failed = rows.iter().filter(|r| r.status == Status::Error).count();
    if failed > 0 {
        bail!(
            "{failed} of {} runs failed (see {})",
            rows.len(),
            s.json.display()
        );
    }
    Ok(())
}
