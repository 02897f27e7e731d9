//! What the GPU benches share: the device (or a line saying there is none) and their
//! environment settings.

use kiln::gguf::GgmlType;
use kiln::gpu::Device;
use kiln::model::{Arch, ModelConfig};
use kiln::synth::{Preset, SynthSpec, config};

/// The Qwen3-30B-A3B-shaped model of `layers` layers (BF16, seed 0) whose context holds
/// `tokens`: what the GPU generates weights for (`GpuModel::synthetic`).
#[allow(dead_code)] // the kernels bench builds no model
pub fn qwen3_30b_config(layers: usize, tokens: usize) -> ModelConfig {
    let mut cfg = config(&SynthSpec {
        arch: Arch::Qwen3Moe,
        preset: Preset::Qwen3_30bA3b,
        n_layer: layers,
        dtype: GgmlType::BF16,
        seed: 0,
    });
    cfg.ctx = cfg.ctx.max(tokens);
    cfg
}

/// The CUDA device, or `None` after printing that `bench` measured nothing (CI has no GPU, and
/// a benchmark is not a test).
pub fn cuda_or_say(bench: &str) -> Option<Device> {
    match Device::cuda() {
        Ok(d) => Some(d),
        Err(e) => {
            println!("{bench}: no usable GPU ({e}); nothing measured");
            None
        }
    }
}

/// `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of positive integers from `name`, else `default`.
#[allow(dead_code)] // not every bench takes a list
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    let Ok(v) = std::env::var(name) else {
        return default.to_vec();
    };
    let list: Vec<usize> = v
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    if list.is_empty() {
        println!("{name}={v:?} holds no positive integer; using {default:?}");
        return default.to_vec();
    }
    list
}
