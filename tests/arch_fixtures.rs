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
//!
//! `cpu_reference_matches_transformers`: the same logits against HF transformers' own
//! LlamaForCausalLM / Qwen2ForCausalLM in float32 on the same weights (`{name}.hf.p33.npy`,
//! made by scripts/lab/arch_refs_torch.py from scripts/export_arch_hf.py's export; the
//! committed files came from its CPU run, provenance in `arch_refs_hf.json`). See HF_TOL.
//!
//! `cpu_reference_agrees_with_llama_cpp`: the same logits against llama.cpp's own loader and
//! graph (`{name}.llamacpp.p33.npy`, scripts/arch_refs_llamacpp.py, llama-cpp-python 0.3.36 on
//! the CPU; `arch_refs_llamacpp.json`). See LLAMACPP_TOL.

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
/// Against transformers' float32 forward (`{name}.hf.p33.npy`): its float32 rounding
/// dominates. A float32 NumPy forward of the same graph on the same weights is 6.7e-7 ..
/// 1.7e-6 (worst row) from the float64 reference; cuBLAS/CPU float32 matmuls without TF32 (the
/// script turns TF32 off) are of that order. 2e-5 leaves ~10x margin and is still below what
/// a wrong arch rule does (`each_arch_rule_matters`: 1e-4 .. 1e-1); argmax must agree on
/// every row as well (the smallest top-1/top-2 gap of the fixtures is 4.5e-4, float32 error
/// on logits of O(1) is ~1e-6).
const HF_TOL: f64 = 2e-5;

/// Against llama.cpp: its CPU matmuls quantize the activations to 8 bits (Q8_0 / Q8_K) before
/// the dot products with quantized weights, so it is not the exact answer for the stored
/// weights: measured worst rows 1.5e-2 (llama-legacy) .. 4.2e-2 (qwen2-kquant), largest single
/// logit error 0.14 on logits of rms ≈ 1. 6e-2 bounds that; a wrong arch rule is larger still
/// (RoPE pairing ~0.2). A loose cross-check of the rules by an independent implementation.
const LLAMACPP_TOL: f64 = 6e-2;
/// Rows whose reference top-1 leads the top-2 by less than this may flip under llama.cpp's
/// activation quantization (measured: 2 of 132 rows flipped, with leads of 0.0004 and 0.0076;
/// llama.cpp then picks the reference's second choice); every other row's top-1 must agree.
const LLAMACPP_MIN_LEAD: f32 = 0.02;

/// Worst per-row rel L2 of kiln's all-position logits against the fixture's, and whether
/// every row's top-1 agrees.
fn compare(fx: &ArchFixture, cfg: &ModelConfig, w: &Weights) -> (f64, bool) {
    compare_with(fx, cfg, w, &fx.want.data)
}

fn compare_with(fx: &ArchFixture, cfg: &ModelConfig, w: &Weights, want: &[f32]) -> (f64, bool) {
    let got = forward(cfg, w, &fx.prompt, true).unwrap();
    let v = cfg.vocab;
    assert_eq!(got.data.len(), want.len());
    let mut worst = 0f64;
    let mut top1 = true;
    for r in 0..fx.prompt.len() {
        let (g, want) = (got.row(r), &want[r * v..][..v]);
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

/// kiln's CPU reference against HF transformers' float32 forward on the same weights. The
/// references are made on the GPU machine (no torch here) and committed: a missing file is a
/// failure, not a skip.
#[test]
fn cpu_reference_matches_transformers() {
    for name in FILES {
        let fx = arch_fixture(name);
        let path = common::test_data(&format!("{name}.hf.p33.npy"));
        if !path.is_file() {
            panic!(
                "{} is missing: run `python3 gpu-bundle/lab/arch_refs_torch.py --out $OUT/arch-refs` \
                 on the GPU machine (bundle from scripts/gpu-bundle.sh) and copy its \
                 {{llama,qwen2}}-{{legacy,kquant}}.hf.p33.npy into tests/data",
                path.display()
            );
        }
        let hf = kiln::npy::read_f32(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            hf.shape,
            fx.want.shape,
            "{name}: transformers' logits are not [{}][vocab]",
            fx.prompt.len()
        );
        let (err, top1) = compare_with(&fx, &fx.cfg, &fx.weights, &hf.data);
        eprintln!("{name}: worst row rel L2 against transformers {err:.3e}");
        assert!(err <= HF_TOL, "{name}: rel L2 {err:.3e} > {HF_TOL:e}");
        assert!(top1, "{name}: a row's top-1 differs from transformers'");
    }
}

#[test]
fn cpu_reference_agrees_with_llama_cpp() {
    for name in FILES {
        let fx = arch_fixture(name);
        let path = common::test_data(&format!("{name}.llamacpp.p33.npy"));
        let lc = kiln::npy::read_f32(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            lc.shape, fx.want.shape,
            "{name}: llama.cpp's logits have another shape"
        );
        let got = forward(&fx.cfg, &fx.weights, &fx.prompt, true).unwrap();
        let v = fx.cfg.vocab;
        let mut worst = 0f64;
        for r in 0..fx.prompt.len() {
            let (g, want, theirs) = (
                got.row(r),
                &fx.want.data[r * v..][..v],
                &lc.data[r * v..][..v],
            );
            worst = worst.max(rel_l2_f32(g, theirs));
            let mut sorted = want.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] >= LLAMACPP_MIN_LEAD {
                assert_eq!(
                    argmax(g),
                    argmax(theirs),
                    "{name} row {r}: top-1 differs from llama.cpp's (lead {:.4})",
                    sorted[0] - sorted[1]
                );
            }
        }
        eprintln!("{name}: worst row rel L2 against llama.cpp {worst:.3e}");
        assert!(
            worst <= LLAMACPP_TOL,
            "{name}: rel L2 {worst:.3e} > {LLAMACPP_TOL:e}"
        );
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
