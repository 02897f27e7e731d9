//! kiln's CPU reference on the llama and qwen2 fixtures of `scripts/make_arch_fixtures.py`
//! (tests/data/: random weights in HF's layout, converted as llama.cpp's converter does, stored
//! in every quantisation kiln reads) against the script's float64 NumPy forward pass, written
//! from HF transformers' Llama/Qwen2 semantics on gguf-py's dequantization of the same blocks.
//!
//! Tolerance: both sides compute in f64 on the same f32 weights (kiln's dequantization is
//! gguf-py's bit for bit, tests/dequant_vectors.rs), so what differs is summation order and
//! libm (~1e-15), the f32 rounding of the stored logits (~6e-8 relative) and, for llama, the
//! frequency factors: the file holds them in f32 (HF's llama3 inv_freq is f64 here), a relative
//! error of ~6e-8 on angles of at most 32 rad. Measured (worst row): llama 3.5e-8 / 5.5e-8,
//! qwen2 3.3e-10 / 1.3e-9 (legacy / kquant). We allow 1e-6: far below what a wrong rule does (MANIFEST's sensitivity table: rms eps 1e-5
//! for 1e-6 moves logits 6e-6; RoPE pairing ~0.2; here also checked: NEOX for llama,
//! dropping rope_freqs, dropping qwen2's biases).

mod common;

use common::{ArchFixture, arch_fixture, argmax, rel_l2_f32};
use kiln::gguf::GgmlType;
use kiln::model::{ModelConfig, RopeType, Weights};
use kiln::reference::forward;

const FILES: [&str; 4] = [
    "llama-legacy",
    "llama-kquant",
    "qwen2-legacy",
    "qwen2-kquant",
];
const TOL: f64 = 1e-6;

/// Worst per-row rel L2 of kiln's all-position logits against the fixture's, and whether
/// every row's top-1 agrees.
fn compare(fx: &ArchFixture, cfg: &ModelConfig, w: &Weights) -> (f64, bool) {
    let got = forward(cfg, w, &fx.prompt, true).unwrap();
    let v = cfg.vocab;
    assert_eq!(got.data.len(), fx.want.data.len());
    let mut worst = 0f64;
    let mut top1 = true;
    for r in 0..fx.prompt.len() {
        let (g, want) = (got.row(r), &fx.want.data[r * v..][..v]);
        worst = worst.max(rel_l2_f32(g, want));
        top1 &= argmax(g) == argmax(want);
    }
    (worst, top1)
}

#[test]
fn cpu_reference_matches_the_float64_hf_forward() {
    for name in FILES {
        let fx = arch_fixture(name);
        let (err, top1) = compare(&fx, &fx.cfg, &fx.weights);
        eprintln!("{name}: worst row rel L2 {err:.3e}");
        assert!(err <= TOL, "{name}: rel L2 {err:.3e} > {TOL:e}");
        assert!(top1, "{name}: a row's top-1 differs");
    }
}

#[test]
fn the_fixtures_hold_every_listed_type() {
    let mut seen = Vec::new();
    for name in FILES {
        let fx = arch_fixture(name);
        let arch = name.split('-').next().unwrap();
        assert_eq!(fx.cfg.arch.name(), arch);
        seen.extend(fx.file.tensor_infos().iter().map(|t| t.dtype));
        let tied = fx.weights.output.is_none();
        assert_eq!(
            tied,
            arch == "qwen2",
            "{name}: qwen2 ties its LM head, llama does not"
        );
        assert_eq!(fx.weights.rope_freqs.is_some(), arch == "llama", "{name}");
    }
    use GgmlType::*;
    for t in [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
    ] {
        assert!(seen.contains(&t), "no fixture tensor of type {t}");
    }
}

/// The comparison is sharp enough to see each arch rule: each of these mistakes moves the
/// logits far past the tolerance.
#[test]
fn each_arch_rule_matters() {
    let llama = arch_fixture("llama-kquant");
    let mut cfg = llama.cfg.clone();
    cfg.rope = RopeType::Neox;
    let (err, _) = compare(&llama, &cfg, &llama.weights);
    eprintln!("llama with NEOX RoPE: {err:.3e}");
    assert!(err > 1e-2, "NEOX instead of NORM: {err:.3e}");
    let mut w = llama.weights.clone();
    w.rope_freqs = None;
    let (err, _) = compare(&llama, &llama.cfg, &w);
    eprintln!("llama without rope_freqs: {err:.3e}");
    assert!(err > 1e-3, "rope_freqs ignored: {err:.3e}");

    let qwen2 = arch_fixture("qwen2-legacy");
    let mut w = qwen2.weights.clone();
    w.layers.iter_mut().for_each(|l| l.bk = None);
    let (err, _) = compare(&qwen2, &qwen2.cfg, &w);
    eprintln!("qwen2 without K bias: {err:.3e}");
    assert!(err > 1e-4, "K bias dropped: {err:.3e}");
    let mut cfg = qwen2.cfg.clone();
    cfg.rope = RopeType::Norm;
    let (err, _) = compare(&qwen2, &cfg, &qwen2.weights);
    eprintln!("qwen2 with NORM RoPE: {err:.3e}");
    assert!(err > 1e-2, "NORM instead of NEOX: {err:.3e}");
}
