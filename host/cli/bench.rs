//! `kiln bench`: the command line of the benchmark in `crate::bench` (see there and
//! docs/bench.md for what it measures and writes).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::Args;

use super::DeviceArg;
use super::output::note;
use crate::bench::catalogue::{self, EMULATOR_MAX_LEN};
use crate::bench::{self, Settings};
use crate::gpu::Device;
use crate::synth::Preset;

/// Where `kiln bench` makes synthetic weights.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsArg {
    Host,
    Gpu,
}

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
    /// Where the synthetic weights of a model without --model-file are made: host (the
    /// weights `kiln synth` writes, so the PyTorch peer can load the same file) or gpu
    /// (generated on the GPU from the seed in well under a second at any depth; other
    /// values; on the emulator, by the same kernels emulated). Default: gpu when --layers is
    /// over 4 on a GPU, else host.
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
    /// Timed prefills per (model, length); the median is reported. Default: 3 (emulator: 1).
    #[arg(long)]
    pub repeats: Option<usize>,
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
    /// Peak memory bandwidth (TB/s) the weight-read rate is compared with. Default: a
    /// device-to-device copy measured at the start of the run (bytes read + written per
    /// second, as the H200's ≈ 4.2 TB/s was measured); 3.0 on the emulator.
    #[arg(long)]
    pub peak_tbs: Option<f64>,
}

/// Attaches to the device the arguments ask for, with a one-line error when there is none.
fn open_device(d: DeviceArg) -> anyhow::Result<Device> {
    let no_gpu =
        |e| anyhow!("kiln bench needs a CUDA GPU ({e}); use --device emulator for a CPU smoke run");
    match d {
        DeviceArg::Emulator => Ok(Device::emulator()),
        DeviceArg::Cuda => Device::cuda().map_err(no_gpu),
        DeviceArg::Auto => Ok(Device::cuda().unwrap_or_else(|e| {
            note(format_args!(
                "device: the CPU emulator (a smoke run), since {e}"
            ));
            Device::emulator()
        })),
        DeviceArg::Cpu => bail!(
            "kiln bench measures the GPU pipeline, which --device cpu does not run; use --device \
             emulator for a CPU smoke run of it"
        ),
    }
}

/// Checks the arguments against what `dev` can run and makes the run's settings.
fn settings(args: &BenchArgs, emulator: bool) -> anyhow::Result<Settings> {
    let names = args
        .models
        .clone()
        .unwrap_or_else(|| catalogue::default_models(emulator));
    let mut lengths = args
        .lengths
        .clone()
        .unwrap_or_else(|| catalogue::default_lengths(emulator));
    lengths.sort_unstable();
    lengths.dedup();
    if lengths.first().is_none_or(|&n| n == 0) {
        bail!("--lengths needs positive prompt lengths");
    }
    if args.layers == 0 {
        bail!("--layers must be at least 1");
    }
    let repeats = args.repeats.unwrap_or(if emulator { 1 } else { 3 });
    let weights_on_gpu = match args.weights {
        Some(w) => w == WeightsArg::Gpu,
        // Host synthesis of a 48-layer 30b model takes ~20 minutes; the GPU's, under a second.
        None => !emulator && args.layers > 4,
    };
    if repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let models = names
        .iter()
        .map(|n| catalogue::model_named(n.trim(), args.layers, args.seed))
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
    let mut model_files = Vec::new();
    for spec in &args.model_files {
        let (name, path) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--model-file {spec:?}: expected NAME=PATH"))?;
        if !models.iter().any(|m| m.name == name) {
            bail!("--model-file {spec:?}: {name} is not among the models run (--models)");
        }
        model_files.push((name.to_string(), PathBuf::from(path)));
    }
    let prompts = args.prompts.clone().unwrap_or_else(|| {
        args.json
            .parent()
            .unwrap_or(Path::new(""))
            .join("prompts.json")
    });
    Ok(Settings {
        models,
        lengths,
        repeats,
        seed: args.seed,
        json: args.json.clone(),
        prompts,
        logits_dir: args.logits_dir.clone(),
        model_files,
        weights_on_gpu,
        skip_after_s: args.skip_after_s,
        deadline_s: args.deadline_s,
        peak_tflops: args.peak_tflops,
        peak_tbs: args.peak_tbs,
    })
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dev = open_device(args.device)?;
    let s = settings(args, !dev.is_cuda())?;
    bench::run(&s, &dev)
}
