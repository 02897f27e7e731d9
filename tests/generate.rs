//! Generation after prefill (issue 11): every decode step's logits are the bits a prefill of
//! the whole sequence gives at that position (on every fixture model), whatever chunk size the
//! prompt ran in; seeded sampling is reproducible; the CPU reference decodes through its KV
//! cache to the bits of its own one-pass forward.
//!
//! On the emulator (CI) 8 tokens after the 5-token prompt on a model of each graph; on the GPU
//! (`KILN_TEST_DEVICE=cuda`) 32 tokens after the 33-token prompt on every fixture model.

mod common;
use common::*;
use kiln::generate::{
    GenerateOptions, Generation, PipelineDecoder, ReferenceDecoder, StopReason, generate,
};
use kiln::gpu::Device;
use kiln::model::{ModelConfig, Weights};
use kiln::pipeline::{GpuModel, PrefillOptions, Session, prefill};
use kiln::sample::{SamplingOptions, greedy};

fn upload(dev: &Device, cfg: &ModelConfig, w: &Weights) -> GpuModel {
    GpuModel::upload(dev, cfg, w, &|_| {}).expect("uploading weights")
}

fn options(max_new: usize, sampling: SamplingOptions) -> GenerateOptions {
    GenerateOptions {
        max_new,
        sampling,
        stop: Vec::new(),
        keep_logits: true,
    }
}

/// Generates `n` tokens on the pipeline with the prompt in chunks of `chunk`.
fn gen_pipeline(
    model: &GpuModel,
    dev: &Device,
    prompt: &[u32],
    n: usize,
    chunk: Option<usize>,
    sampling: SamplingOptions,
) -> Generation {
    let cap = prompt.len() + n - 1;
    let mut dec = PipelineDecoder::new(model, dev, prompt.len(), cap, chunk).unwrap();
    generate(
        &mut dec,
        prompt,
        cap,
        &options(n, sampling),
        &mut |_| Ok(()),
    )
    .unwrap_or_else(|e| panic!("generating on {}: {e}", dev.name()))
}

/// Every generated position's logits against the all-position prefill of prompt + generated.
fn assert_decode_matches_prefill(
    name: &str,
    model: &GpuModel,
    dev: &Device,
    prompt: &[u32],
    g: &Generation,
) {
    let v = model.cfg.vocab;
    let n = g.tokens.len();
    let mut seq = prompt.to_vec();
    seq.extend(&g.tokens[..n - 1]);
    let opts = PrefillOptions {
        all_logits: true,
        ..Default::default()
    };
    let full = prefill(model, dev, &seq, &opts).unwrap();
    assert_eq!(full.rows, seq.len());
    for (i, row) in g.logits.iter().enumerate() {
        let want = &full.logits[(prompt.len() - 1 + i) * v..][..v];
        assert_same(
            &bits(row),
            &bits(want),
            &format!("{name} on {}: generated token {i}'s logits", dev.name()),
        );
        assert_eq!(g.tokens[i], greedy(row), "{name}: token {i} is not greedy");
    }
}

/// (name, fixture source): the shared fixtures and the llama/qwen2 ones in tests/data.
fn models(dev: &Device) -> Vec<(&'static str, bool)> {
    let all = [
        ("qwen3-f32", true),
        ("qwen2moe-f32", true),
        ("qwen3moe-bf16", true),
        ("qwen3moe-f32", true),
        ("qwen3moe-f16", true),
        ("qwen3moe-q8_0", true),
        ("qwen3moe-q4_k_m", true),
        ("qwen3moe-q6_k", true),
        ("llama-kquant", false),
        ("llama-legacy", false),
        ("qwen2-kquant", false),
        ("qwen2-legacy", false),
    ];
    // The emulator (CI) runs one model per graph: dense, MoE with a shared expert, MoE,
    // llama (NORM RoPE, frequency factors), qwen2 (biases, tied head). The others differ only
    // in their weights' values once on the device.
    let ci = [
        "qwen3-f32",
        "qwen2moe-f32",
        "qwen3moe-bf16",
        "llama-kquant",
        "qwen2-legacy",
    ];
    all.into_iter()
        .filter(|(n, _)| dev.is_cuda() || ci.contains(n))
        .collect()
}

fn load_any(name: &str, shared: bool) -> (ModelConfig, Weights, Vec<u32>) {
    if shared {
        let (_, cfg, w) = load(name);
        (cfg, w, prompt("p33"))
    } else {
        let fx = arch_fixture(name);
        (fx.cfg, fx.weights, fx.prompt)
    }
}

#[test]
fn decode_logits_equal_prefill_logits_bit_for_bit() {
    for dev in devices() {
        let (n, len) = if dev.is_cuda() { (32, 33) } else { (8, 5) };
        for (name, shared) in models(&dev) {
            let (cfg, w, p) = load_any(name, shared);
            let model = upload(&dev, &cfg, &w);
            let prompt = &p[..len];
            let g = gen_pipeline(&model, &dev, prompt, n, None, SamplingOptions::default());
            assert_eq!(g.tokens.len(), n);
            assert_eq!(g.reason, StopReason::MaxTokens);
            assert_eq!(g.steps, n - 1);
            assert_decode_matches_prefill(name, &model, &dev, prompt, &g);
            eprintln!("{name} on {}: {n} tokens {:?}", dev.name(), g.tokens);
        }
    }
}

/// The prompt in chunks of 1, 7 and all at once: the same tokens and the same bits.
#[test]
fn prompt_chunk_size_changes_no_generated_bit() {
    for dev in devices() {
        let (name, n, len) = if dev.is_cuda() {
            ("qwen3moe-bf16", 32, 33)
        } else {
            ("qwen3-f32", 4, 8)
        };
        let (_, cfg, w) = load(name);
        let model = upload(&dev, &cfg, &w);
        let p = prompt("p33");
        let prompt = &p[..len];
        let whole = gen_pipeline(&model, &dev, prompt, n, None, SamplingOptions::default());
        for chunk in [1, 7] {
            let g = gen_pipeline(
                &model,
                &dev,
                prompt,
                n,
                Some(chunk),
                SamplingOptions::default(),
            );
            assert_eq!(g.tokens, whole.tokens, "{name}: chunks of {chunk}");
            for (i, (a, b)) in g.logits.iter().zip(&whole.logits).enumerate() {
                assert_same(
                    &bits(a),
                    &bits(b),
                    &format!("{name} chunks of {chunk}: row {i}"),
                );
            }
        }
    }
}

/// Sampling on the pipeline: a seed gives the same tokens twice; another seed other tokens.
#[test]
fn seeded_sampling_is_reproducible_on_the_pipeline() {
    for dev in devices() {
        let (_, cfg, w) = load("qwen3-f32");
        let model = upload(&dev, &cfg, &w);
        let p = prompt("p5");
        let sampling = |seed| SamplingOptions {
            temperature: 1.5,
            top_k: Some(100),
            top_p: Some(0.98),
            seed,
        };
        let n = if dev.is_cuda() { 32 } else { 5 };
        let a = gen_pipeline(&model, &dev, &p, n, None, sampling(11));
        let b = gen_pipeline(&model, &dev, &p, n, None, sampling(11));
        let c = gen_pipeline(&model, &dev, &p, n, None, sampling(12));
        assert_eq!(a.tokens, b.tokens, "same seed");
        assert_ne!(a.tokens, c.tokens, "seeds 11 and 12");
        assert_decode_matches_prefill_sampled(&model, &dev, &p, &a);
    }
}

/// Like [`assert_decode_matches_prefill`] without the greedy check.
fn assert_decode_matches_prefill_sampled(
    model: &GpuModel,
    dev: &Device,
    p: &[u32],
    g: &Generation,
) {
    let v = model.cfg.vocab;
    let mut seq = p.to_vec();
    seq.extend(&g.tokens[..g.tokens.len() - 1]);
    let opts = PrefillOptions {
        all_logits: true,
        ..Default::default()
    };
    let full = prefill(model, dev, &seq, &opts).unwrap();
    for (i, row) in g.logits.iter().enumerate() {
        let want = &full.logits[(p.len() - 1 + i) * v..][..v];
        assert_same(&bits(row), &bits(want), &format!("sampled token {i}"));
    }
}

/// The CPU reference decodes through its KV cache to the bits of its one-pass forward, and
/// samples reproducibly from a seed.
#[test]
fn reference_decoder_matches_its_forward_and_samples_reproducibly() {
    let (_, cfg, w) = load("qwen2moe-f32");
    let p = prompt("p5");
    let run = |sampling| {
        let mut dec = ReferenceDecoder::new(&cfg, &w);
        generate(&mut dec, &p, cfg.ctx, &options(12, sampling), &mut |_| {
            Ok(())
        })
        .unwrap()
    };
    let g = run(SamplingOptions::default());
    let mut seq = p.clone();
    seq.extend(&g.tokens[..11]);
    let all = kiln::reference::forward(&cfg, &w, &seq, true).unwrap();
    for (i, row) in g.logits.iter().enumerate() {
        assert_same(&bits(row), &bits(all.row(p.len() - 1 + i)), "reference row");
    }
    let sampling = |seed| SamplingOptions {
        temperature: 1.5,
        top_k: None,
        top_p: Some(0.95),
        seed,
    };
    assert_eq!(run(sampling(3)).tokens, run(sampling(3)).tokens);
    assert_ne!(run(sampling(3)).tokens, run(sampling(4)).tokens);
}

/// Stop tokens end the text (not streamed), the context end stops it, and a session refuses a
/// step past its capacity with an error.
#[test]
fn stops_and_capacity() {
    let (_, cfg, w) = load("qwen3-f32");
    let p = prompt("p5");
    let first = {
        let mut dec = ReferenceDecoder::new(&cfg, &w);
        generate(
            &mut dec,
            &p,
            cfg.ctx,
            &options(3, Default::default()),
            &mut |_| Ok(()),
        )
        .unwrap()
        .tokens
    };
    let mut streamed = Vec::new();
    let mut opts = options(3, Default::default());
    opts.stop = vec![first[1]];
    let mut dec = ReferenceDecoder::new(&cfg, &w);
    let g = generate(&mut dec, &p, cfg.ctx, &opts, &mut |t| {
        streamed.push(t);
        Ok(())
    })
    .unwrap();
    if first[0] != first[1] {
        assert_eq!(g.reason, StopReason::EndOfText(first[1]));
        assert_eq!(streamed, vec![first[0]]);
    }
    let mut dec = ReferenceDecoder::new(&cfg, &w);
    let g = generate(
        &mut dec,
        &p,
        p.len() + 2,
        &options(10, Default::default()),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(g.reason, StopReason::ContextEnd);
    assert_eq!(g.tokens.len(), 3);

    let dev = Device::emulator();
    let model = upload(&dev, &cfg, &w);
    let mut s = Session::new(&model, &dev, 2, 1, PrefillOptions::default()).unwrap();
    assert!(s.logits_of_last().is_err());
    s.step(p[0]).unwrap();
    s.step(p[1]).unwrap();
    let e = s.step(p[2]).expect_err("a step past the capacity");
    assert!(e.to_string().contains("does not fit"), "{e}");
}

#[test]
fn sampler_rules() {
    use kiln::sample::Sampler;
    // Greedy: the lowest id among equal maxima; NaN never wins.
    assert_eq!(greedy(&[1.0, 3.0, 3.0, f32::NAN]), 1);
    assert_eq!(greedy(&[f32::NAN, 0.5]), 1);
    let logits = [0.0f32, 2.0, 1.0, 2.0, -1.0];
    let with = |top_k, top_p, temperature| {
        Sampler::new(SamplingOptions {
            temperature,
            top_k,
            top_p,
            seed: 5,
        })
    };
    for _ in 0..20 {
        // top-k 1 and a tiny top-p leave the first candidate: the tie's lower id.
        assert_eq!(with(Some(1), None, 1.0).sample(&logits), 1);
        assert_eq!(with(None, Some(1e-6), 1.0).sample(&logits), 1);
    }
    // top-k 2 leaves ids 1 and 3 only; the draws follow the softmax (temperature 1).
    let mut s = with(Some(2), None, 1.0);
    assert!((0..200).all(|_| matches!(s.sample(&logits), 1 | 3)));
    let mut s = with(None, None, 1.0);
    let draws = 20000;
    let mut count = [0usize; 5];
    (0..draws).for_each(|_| count[s.sample(&logits) as usize] += 1);
    let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
    for (i, &l) in logits.iter().enumerate() {
        let want = f64::from(l).exp() / z;
        let got = count[i] as f64 / draws as f64;
        assert!((got - want).abs() < 0.015, "id {i}: {got} vs {want}");
    }
    // Out-of-range options are refused.
    for bad in [
        SamplingOptions {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingOptions {
            temperature: 1.0,
            top_k: Some(0),
            ..Default::default()
        },
        SamplingOptions {
            temperature: 1.0,
            top_p: Some(1.5),
            ..Default::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}
