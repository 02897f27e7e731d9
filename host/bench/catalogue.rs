//! The models `kiln bench` knows, and the prompts it feeds them.

use anyhow::bail;

use crate::gguf::GgmlType;
use crate::model::Arch;
use crate::rng::Rng;
use crate::synth::{Preset, SynthSpec};

/// Longest prompt the emulator is asked to run (it executes every GPU thread on the CPU).
pub const EMULATOR_MAX_LEN: usize = 64;

/// One model of the benchmark: a name on the command line and the synthetic spec it stands for.
#[derive(Clone, Debug)]
pub struct BenchModel {
    pub name: &'static str,
    pub spec: SynthSpec,
}

/// `tiny` (the qwen3moe fixture dims, 2 layers) or `30b` (Qwen3-30B-A3B dims, `layers`
/// layers); BF16 weights drawn from `seed`.
pub fn model_named(name: &str, layers: usize, seed: u64) -> anyhow::Result<BenchModel> {
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

/// The models run when none are named: the tiny one only on the emulator.
pub fn default_models(emulator: bool) -> Vec<String> {
    if emulator {
        vec!["tiny".into()]
    } else {
        vec!["tiny".into(), "30b".into()]
    }
}

/// The prompt lengths run when none are given: one short prompt on the emulator.
pub fn default_lengths(emulator: bool) -> Vec<usize> {
    if emulator {
        vec![8]
    } else {
        vec![512, 2048, 4096, 8192]
    }
}

/// The prompt of `n` ids for a model with `vocab` tokens (the same ids for a given seed, n and
/// vocab, whatever else runs).
pub fn prompt_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed ^ 0x6B69_6C6E_6265_6E63 ^ (n as u64).wrapping_mul(0x9E37_79B9));
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_reproducible_and_in_range() {
        let a = prompt_ids(3, 100, 512);
        assert_eq!(a, prompt_ids(3, 100, 512));
        assert_ne!(a, prompt_ids(4, 100, 512));
        assert!(a.iter().all(|&t| t < 512));
    }
}
