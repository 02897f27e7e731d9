//! Kernel benchmark: kiln's tensor-core kernels on the GPU at Qwen3-30B-A3B shapes, timed
//! through kiln's own launch path, against the roofline. Prints a table and writes
//! `kernels-bench.json` (into `$KILN_BENCH_OUT`, else the working directory).
//!
//!     cargo bench --bench kernels            (on a machine with a Hopper GPU)
//!     gpu-bundle/run.sh bench                (on the GPU machine: beside the PyTorch peers of
//!                                             scripts/lab/, measured in the same call)
//!
//! Without a usable GPU it says so and exits 0: CI has none, and a benchmark is not a test.
//! TFLOP/s count 2·M·N·K for GEMMs and 4·N²·d·heads/2 for causal attention; the peak is the
//! `KILN_PEAK_TFLOPS` measured in the same run by the peer script (default 790, the H200's
//! measured bf16 matmul rate on 2026-11-29).
//!
//! `KILN_BENCH_ONLY=gemm,attention,moe` (any subset) runs only those families: with
//! `KILN_KERNELS_PTX` (a variant build of the kernels, see `kiln::gpu::device`) it compares
//! kernel variants in one GPU session.
//!
//! The dense GEMMs run in every tiling (narrow, wide, wide in cluster pairs sharing B: the
//! `*_pair` rows), whatever `KILN_GEMM_PAIRS` says (it only steers `TileWidth::Auto`), so one
//! run is the A/B of pairs against the unpaired wide tiles: f32 out (the o projection adds its
//! residual), bf16 out (the Q|K|V projections as the pipeline runs them) and SwiGLU (dense FFN).

mod common;
use common::*;

use kiln::gpu::ops::attention_input::{
    Projected, Projection, QkNorm, attention_input, project_attention_input, rope_inv_freq,
};
use kiln::gpu::ops::flash_attention::{AttentionShape, KvCache, flash_attention};
use kiln::gpu::ops::gemm::Epilogue;
use kiln::gpu::ops::gemm_wgmma::{
    TileWidth, interleaved_rows, matmul_bf16, matmul_bf16_tiled, matmul_swiglu_tiled, matmul_tiled,
};
use kiln::gpu::ops::moe::{MoeShape, RouteOptions, Routing};
use kiln::gpu::ops::moe_router::{Router, RouterWeights};
use kiln::gpu::{Device, TmaMatrix};
use kiln::rng::Rng;
use std::time::Instant;

struct Row {
    kernel: &'static str,
    shape: String,
    ms: f64,
    tflops: f64,
}

fn random_bf16(dev: &Device, rng: &mut Rng, rows: usize, cols: usize) -> TmaMatrix {
    let bits: Vec<u16> = (0..rows * cols)
        .map(|_| half::bf16::from_f32(rng.normal() as f32).to_bits())
        .collect();
    let buf = dev.upload(&bits, "bench input").expect("upload");
    dev.tma_matrix(buf, rows, cols).expect("tensor map")
}

/// Median milliseconds of `f` over `iters` runs (each synchronised), after `warmup` runs.
fn time_ms(dev: &Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    dev.synchronize().expect("sync");
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            dev.synchronize().expect("sync");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let Some(dev) = cuda_or_say("kernels bench") else {
        return;
    };
    let peak: f64 = env_or("KILN_PEAK_TFLOPS", 790.0);
    let only = std::env::var("KILN_BENCH_ONLY").unwrap_or_default();
    let wanted = |family: &str| only.is_empty() || only.split(',').any(|f| f.trim() == family);
    let mut rng = Rng::new(0x6b69_6c6e);
    let mut rows = Vec::new();
    // Dense projections (M tokens × N features × K), as in the GEMM issue's table; the o
    // projection adds its residual (`+ y`); the Q|K|V ones run with bf16 out too (`true`), as
    // the pipeline's two-kernel path runs them.
    let gemm_shapes = [
        (4096, 4096, 2048, "q proj", true),
        (4096, 512, 2048, "k/v proj", true),
        (4096, 2048, 4096, "o proj, + y", false),
        (4096, 5120, 2048, "fused qkv", true),
        (8192, 8192, 8192, "square", false),
        (512, 5120, 2048, "fused qkv, N=512", true),
    ];
    for (m, n, k, what, bf16) in gemm_shapes.into_iter().filter(|_| wanted("gemm")) {
        let x = random_bf16(&dev, &mut rng, m, k);
        let w = random_bf16(&dev, &mut rng, n, k);
        let y = dev.alloc::<f32>(m * n, "y").expect("alloc");
        let epilogue = if what.ends_with("+ y") {
            Epilogue::ADD_TO_Y
        } else {
            Epilogue::STORE
        };
        // Every tiling (the same bits), so the choice `TileWidth::Auto` makes can be checked.
        for (width, kernel) in [
            (TileWidth::Narrow, "gemm_wgmma_f32"),
            (TileWidth::Wide, "gemm_wgmma_f32_wide"),
            (TileWidth::WidePaired, "gemm_wgmma_f32_wide_pair"),
        ] {
            let ms = time_ms(&dev, 3, 20, || {
                matmul_tiled(&dev, &x, &w, &y, (m, width), epilogue).expect("matmul")
            });
            let tflops = 2.0 * (m * n * k) as f64 / ms / 1e9;
            rows.push(Row {
                kernel,
                shape: format!("{m}x{n}x{k} ({what})"),
                ms,
                tflops,
            });
        }
        if !bf16 {
            continue;
        }
        let y16 = dev.alloc::<u16>(m * n, "y16").expect("alloc");
        for (width, kernel) in [
            (TileWidth::Narrow, "gemm_wgmma_bf16"),
            (TileWidth::Wide, "gemm_wgmma_bf16_wide"),
            (TileWidth::WidePaired, "gemm_wgmma_bf16_wide_pair"),
        ] {
            let ms = time_ms(&dev, 3, 20, || {
                matmul_bf16_tiled(&dev, &x, &w, &y16, (m, width), Epilogue::STORE)
                    .expect("matmul_bf16")
            });
            rows.push(Row {
                kernel,
                shape: format!("{m}x{n}x{k} ({what})"),
                ms,
                tflops: 2.0 * (m * n * k) as f64 / ms / 1e9,
            });
        }
    }
    // The dense SwiGLU GEMM (gate|up of Qwen3's dense FFN at hidden 2048, ff 6144).
    if wanted("gemm") {
        let (m, ff, k) = (4096, 6144, 2048);
        let x = random_bf16(&dev, &mut rng, m, k);
        let w = random_bf16(&dev, &mut rng, interleaved_rows(ff), k);
        let h = dev.tma_zeros(m, ff, "h").expect("alloc");
        for (width, kernel) in [
            (TileWidth::Narrow, "gemm_wgmma_swiglu"),
            (TileWidth::Wide, "gemm_wgmma_swiglu_wide"),
            (TileWidth::WidePaired, "gemm_wgmma_swiglu_wide_pair"),
        ] {
            let ms = time_ms(&dev, 3, 20, || {
                matmul_swiglu_tiled(&dev, &x, &w, &h, (m, width)).expect("swiglu")
            });
            rows.push(Row {
                kernel,
                shape: format!("{m}x{}x{k}", 2 * ff),
                ms,
                tflops: 2.0 * (m * 2 * ff * k) as f64 / ms / 1e9,
            });
        }
    }
    // The Q|K|V projection with QK-norm, RoPE and the KV append (Qwen3-30B-A3B: hidden 2048,
    // 32 q / 4 kv heads × 128): the two-kernel path and the fused epilogue, same inputs.
    for n in [4096usize, 512].into_iter().filter(|_| wanted("gemm")) {
        let (hidden, n_head, n_kv, hd) = (2048usize, 32usize, 4usize, 128usize);
        let m = (n_head + 2 * n_kv) * hd;
        let x = random_bf16(&dev, &mut rng, n, hidden);
        let w = random_bf16(&dev, &mut rng, m, hidden);
        let qkv = dev.alloc::<u16>(n * m, "qkv").expect("alloc");
        let q = dev.tma_zeros(n, n_head * hd, "q").expect("alloc");
        let cache = KvCache::new(&dev, n, n_kv, hd).expect("cache");
        let inv_freq = dev
            .upload(&rope_inv_freq(1e6, hd), "inv_freq")
            .expect("upload");
        let ones: Vec<f32> = (0..hd).map(|_| 1.0 + 0.1 * rng.normal() as f32).collect();
        let qn = dev.upload(&ones, "q_norm").expect("upload");
        let kn = dev.upload(&ones, "k_norm").expect("upload");
        let norm = Some(QkNorm {
            q: &qn,
            k: &kn,
            eps: 1e-6,
        });
        let shape = AttentionShape {
            n,
            start_pos: 0,
            n_head,
            n_kv,
            head_dim: hd,
        };
        let flops = 2.0 * (n * m * hidden) as f64;
        let two = time_ms(&dev, 3, 20, || {
            matmul_bf16(&dev, &x, &w, &qkv, n, Epilogue::STORE).expect("qkv");
            let input = Projected {
                qkv: &qkv,
                inv_freq: &inv_freq,
                norm,
            };
            attention_input(&dev, input, &q, &cache, shape).expect("attention_input")
        });
        let fused = time_ms(&dev, 3, 20, || {
            let input = Projection {
                x: &x,
                w: &w,
                bias: None,
                inv_freq: &inv_freq,
                norm,
            };
            project_attention_input(&dev, input, &q, &cache, shape).expect("fused")
        });
        for (kernel, ms) in [
            ("gemm_wgmma_bf16 + attention_input_hd128", two),
            ("gemm_wgmma_qkv_rope", fused),
        ] {
            rows.push(Row {
                kernel,
                shape: format!("{n}x{m}x{hidden} (qkv + qk-norm, rope, kv)"),
                ms,
                tflops: flops / ms / 1e9,
            });
        }
    }
    // Flash attention, causal, from position 0: Qwen3-30B-A3B heads (32 q / 4 kv × 128) and
    // Llama 3.2 1B heads (32 q / 8 kv × 64).
    let heads = [(128usize, 4usize), (64, 8)];
    for (hd, n_kv) in heads.into_iter().filter(|_| wanted("attention")) {
        for n in [1024usize, 4096, 8192, 16384] {
            let n_head = 32;
            let capacity = n.div_ceil(128) * 128;
            let q = random_bf16(&dev, &mut rng, n, n_head * hd);
            let o = dev.tma_zeros(n, n_head * hd, "o").expect("alloc");
            // Random keys and values, K `[capacity][n_kv·hd]` and V transposed.
            let k = random_bf16(&dev, &mut rng, capacity, n_kv * hd);
            let v = random_bf16(&dev, &mut rng, n_kv * hd, capacity);
            let cache = KvCache::from_parts(&dev, k, v, hd).expect("cache");
            let shape = AttentionShape {
                n,
                start_pos: 0,
                n_head,
                n_kv,
                head_dim: hd,
            };
            let ms = time_ms(&dev, 2, 10, || {
                flash_attention(&dev, &q, &cache, &o, shape).expect("attention")
            });
            let flops = 4.0 * (n * n) as f64 * hd as f64 * n_head as f64 / 2.0;
            rows.push(Row {
                kernel: if hd == 64 {
                    "flash_attention_hd64"
                } else {
                    "flash_attention_hd128"
                },
                shape: format!("N={n} {n_head}q/{n_kv}kv x {hd}"),
                ms,
                tflops: flops / ms / 1e9,
            });
        }
    }
    // The MoE stage at Qwen3-30B-A3B dims (hidden 2048, 128 experts of ff 768, top-8): the
    // routing stage (the router GEMM on tensor cores from bf16 rows and the f32 weights' three
    // bf16 parts, top-k, grouping: 3 launches, as the pipeline runs it), and the grouped
    // expert GEMMs. N = 512 too: there the routing's share of a layer is what issue 7 bounds.
    for n in [512usize, 4096].into_iter().filter(|_| wanted("moe")) {
        let (hidden, ff, ne, k) = (2048usize, 768usize, 128usize, 8usize);
        let x = random_bf16(&dev, &mut rng, n, hidden);
        let wr: Vec<f32> = (0..ne * hidden)
            .map(|_| rng.normal() as f32 * 0.02)
            .collect();
        let wr = dev.upload(&wr, "router").expect("upload");
        let wr = RouterWeights::new(&dev, &wr, ne, hidden).expect("router weights");
        let routing = Routing::new(&dev, n, ne, k).expect("routing");
        let router = Router::new(&dev, n, ne, hidden).expect("router");
        let opts = RouteOptions {
            renormalise: true,
            logits: None,
        };
        let ms = time_ms(&dev, 3, 20, || {
            router
                .route(&dev, &x, &wr, &routing, n, opts)
                .expect("route")
        });
        rows.push(Row {
            kernel: "moe routing",
            shape: format!("N={n} h={hidden} {ne} experts top-{k}"),
            ms,
            // The model's FLOPs (the tensor cores do three times this: one product per part).
            tflops: 2.0 * (n * ne * hidden) as f64 / ms / 1e9,
        });
        let w_gate_up = random_bf16(&dev, &mut rng, ne * interleaved_rows(ff), hidden);
        let w_down = random_bf16(&dev, &mut rng, ne * hidden, ff);
        let pairs = n * k;
        let xg = Routing::grouped_operand(&dev, pairs, hidden, "xg").expect("alloc");
        let h = Routing::grouped_operand(&dev, pairs, ff, "h").expect("alloc");
        let out = dev.alloc::<u16>(pairs * hidden, "out").expect("alloc");
        let moe = MoeShape {
            tokens: n,
            hidden,
            ff,
        };
        let ms = time_ms(&dev, 3, 20, || {
            routing.gather(&dev, &x, &xg, moe).expect("gather");
            routing
                .experts_swiglu(&dev, &xg, &w_gate_up, &h, moe)
                .expect("swiglu");
            routing
                .experts_down(&dev, &h, &w_down, &out, moe)
                .expect("down");
        });
        rows.push(Row {
            kernel: "moe experts",
            shape: format!("N={n} gather+gate|up+down"),
            ms,
            tflops: 6.0 * (pairs * hidden * ff) as f64 / ms / 1e9,
        });
    }
    println!("\nkernels on {} (peak used: {peak:.0} TFLOP/s)", dev.name());
    // The explicit tilings above ignore it; the pipeline's `TileWidth::Auto` follows it.
    println!(
        "{}: Auto tiles wide GEMMs {}",
        kiln::gpu::ops::GEMM_PAIRS_VAR,
        match kiln::gpu::ops::gemm_pairs() {
            kiln::gpu::ops::GemmPairs::Large => "paired from PAIRED_MIN_TILES on (the default)",
            kiln::gpu::ops::GemmPairs::Never => "unpaired",
            kiln::gpu::ops::GemmPairs::Always => "paired",
        }
    );
    println!(
        "{:<40} {:<28} {:>9} {:>8} {:>7}",
        "kernel", "shape", "ms", "TFLOP/s", "%peak"
    );
    for r in &rows {
        println!(
            "{:<40} {:<28} {:>9.3} {:>8.0} {:>6.1}%",
            r.kernel,
            r.shape,
            r.ms,
            r.tflops,
            100.0 * r.tflops / peak
        );
    }
    let json = serde_json::json!({
        "device": dev.name(),
        "peak_tflops": peak,
        "rows": rows.iter().map(|r| serde_json::json!({
            "kernel": r.kernel, "shape": r.shape, "ms": r.ms, "tflops": r.tflops,
        })).collect::<Vec<_>>(),
    });
    let dir = std::env::var("KILN_BENCH_OUT").unwrap_or_else(|_| ".".into());
    let path = std::path::Path::new(&dir).join("kernels-bench.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => println!("could not write {}: {e}", path.display()),
    }
}
