//! MoE kernels one by one against the float64 references (`kiln::reference::ops`) at
//! N ∈ {1, 5, 33, 257}: router top-k (with planted exact ties → lower expert id), the expert
//! grouping and its tile table (`GROUP_TILE_ROWS`-row tiles), the row gather, the grouped
//! gate|up + SwiGLU and down GEMMs on tensor cores (`Routing::gather` → `experts_swiglu` →
//! `experts_down`, weights laid out as `host/pipeline/weights.rs` does: each expert's
//! `interleave_gate_up` stacked, down `[n_expert·hidden][ff]`), and the one-launch weighted
//! scatter-reduce with the shared expert last; then the whole chain for one token alone vs
//! inside the batch, bit for bit.
//!
//! Experts are ragged on purpose: expert 0 is favoured for 3 tokens in 4 (at N = 257 it holds
//! ~190 rows: full 64-row tiles and a partial one), experts 3 and 7 are never chosen (0 rows,
//! in the middle and at the end of the table), the rest share what is left.
//!
//! Tolerances: top-k ids, the grouping and the gather are exact; routing weights are one f32
//! softmax (ex2.approx) from exact: 1e-6; the grouped SwiGLU is one bf16 rounding of an f32
//! `silu(g)·u` from bf16 inputs: element-wise `(2^-8 + 3e-5)·|want| + 3e-5·rms(want)`
//! (`common::assert_bf16_close`, as in `kernels_gemm_wgmma`); the grouped down GEMM is f32
//! accumulation over ff = 96 from the kernel's own bf16 h, stored as one bf16 rounding:
//! element-wise `(2^-8 + 1e-5)·|want| + 1e-5·rms(want)` (the f32 sum is within ~1e-6 of
//! exact, as `kernels_gemm_wgmma`'s 1e-5 rel L2); the combine is a handful of f32 fmas on the
//! kernel's own bf16 expert rows (exact in f64), so its reference takes those rows: 2e-6.

mod common;
use common::*;
use gpu_kernels::device::float::split_bf16x3;
use kiln::gpu::Device;
use kiln::gpu::ops::gemm_wgmma::{interleave_gate_up, interleaved_rows};
use kiln::gpu::ops::moe::{MoeShape, PartialShape, RouteOptions, Routing};
use kiln::reference::ops::{self, dot, widen};

const ROWS: [usize; 4] = [1, 5, 33, 257];
const N_EXPERT: usize = 8;
const HIDDEN: usize = 128;
/// Not a multiple of 64: each expert's interleaved gate|up has a half-empty block.
const FF: usize = 96;
/// Experts the router never picks.
const UNUSED: [usize; 2] = [3, 7];

/// Each token's routing by the reference (softmax, top-k with ties to the lower id, optional
/// renormalisation): ids and weights in selection order.
fn route_ref(logits: &[f32], k: usize, renorm: bool) -> (Vec<u32>, Vec<f64>) {
    logits
        .chunks(N_EXPERT)
        .flat_map(|row| ops::route(&widen(row), k, renorm))
        .map(|(e, w)| (e as u32, w))
        .unzip()
}

fn shape(n: usize) -> MoeShape {
    MoeShape {
        tokens: n,
        hidden: HIDDEN,
        ff: FF,
    }
}

struct Case {
    dev: Device,
    n: usize,
    k: usize,
    logits: Vec<f32>,
    /// `[n][HIDDEN]` bf16.
    x: (Vec<u16>, Vec<f64>),
    /// `[N_EXPERT·FF][HIDDEN]` each, bf16.
    gate: (Vec<u16>, Vec<f64>),
    up: (Vec<u16>, Vec<f64>),
    /// `[N_EXPERT·HIDDEN][FF]` bf16.
    down: (Vec<u16>, Vec<f64>),
}

impl Case {
    fn new(dev: &Device, n: usize, k: usize, salt: u64) -> Case {
        let mut r = rng(salt);
        let mut logits = r.normal_vec(n * N_EXPERT, 1.0);
        for (t, row) in logits.chunks_mut(N_EXPERT).enumerate() {
            if t % 4 != 0 {
                row[0] += 3.0;
            }
            for e in UNUSED {
                row[e] = -30.0;
            }
            // Plant exact ties: expert 5 equals expert 2 for every third token.
            if t % 3 == 0 {
                row[5] = row[2];
            }
        }
        let std_in = 1.0 / (HIDDEN as f64).sqrt();
        Case {
            dev: dev.clone(),
            n,
            k,
            logits,
            x: bf16_bits_and_values(&r.normal_vec(n * HIDDEN, 1.0)),
            gate: bf16_bits_and_values(&r.normal_vec(N_EXPERT * FF * HIDDEN, 2.0 * std_in)),
            up: bf16_bits_and_values(&r.normal_vec(N_EXPERT * FF * HIDDEN, std_in)),
            down: bf16_bits_and_values(
                &r.normal_vec(N_EXPERT * HIDDEN * FF, 1.0 / (FF as f64).sqrt()),
            ),
        }
    }

    /// The experts' gate|up as the pipeline uploads them: each expert interleaved, stacked.
    fn gate_up_bits(&self) -> Vec<u16> {
        let per = FF * HIDDEN;
        (0..N_EXPERT)
            .flat_map(|e| {
                let span = e * per..(e + 1) * per;
                interleave_gate_up(&self.gate.0[span.clone()], &self.up.0[span], FF, HIDDEN)
            })
            .collect()
    }
}

/// The logits as `[n][3][ne]` partials: each logit's exact bf16 parts (lo, mid, hi), whose sum
/// in that order is the logit again, bit for bit (`lo + mid` has at most 16 significant bits).
fn split_logits(logits: &[f32], ne: usize) -> Vec<f32> {
    let parts: Vec<[u16; 3]> = logits.iter().map(|&v| split_bf16x3(v)).collect();
    let mut out = Vec::with_capacity(3 * logits.len());
    for row in parts.chunks(ne) {
        for p in 0..3 {
            out.extend(bf16_to_f32(&row.iter().map(|q| q[p]).collect::<Vec<_>>()));
        }
    }
    out
}

/// The three-part split of `split_logits` over two K segments (`[2][n][3][ne]`): segment 0
/// holds (lo, 0, hi), segment 1 (0, mid, 0), so the sum in `PartialLogits` order
/// (lo, 0, 0, mid, hi, 0) is the logit again, bit for bit, and every part is read from one
/// plane only.
fn split_logits_in_segments(logits: &[f32], ne: usize) -> Vec<f32> {
    let parts = split_logits(logits, ne);
    let plane = |segment: usize| {
        parts.iter().enumerate().map(move |(i, &x)| {
            let mid = (i / ne) % 3 == 1;
            if mid == (segment == 1) { x } else { 0.0 }
        })
    };
    plane(0).chain(plane(1)).collect()
}

/// Routes `n` tokens of `ne`-expert logits on `dev` (outputs poisoned first), from the logits,
/// from their exact three-part split, and from that split over two K segments, and checks
/// ids, weights, the logits the kernel writes, the stable grouping, offsets and the tile table
/// against the reference.
fn check_routing(dev: &Device, logits: &[f32], n: usize, ne: usize, k: usize, renorm: bool) {
    let shape = |parts, segments| PartialShape { parts, segments };
    for (shape, partials) in [
        (PartialShape::LOGITS, logits.to_vec()),
        (shape(3, 1), split_logits(logits, ne)),
        (shape(3, 2), split_logits_in_segments(logits, ne)),
    ] {
        let mut routing = Routing::new(dev, n, ne, k).unwrap();
        let pairs_len = n * k;
        routing.ids.write(&vec![u32::MAX; pairs_len]).unwrap();
        routing.weights.write(&vec![f32::NAN; pairs_len]).unwrap();
        routing.sorted.write(&vec![u32::MAX; pairs_len]).unwrap();
        routing
            .row_of_pair
            .write(&vec![u32::MAX; pairs_len])
            .unwrap();
        routing.offsets.write(&vec![u32::MAX; ne + 1]).unwrap();
        routing.num_tiles.write(&[u32::MAX]).unwrap();
        let written = poisoned(dev, n * ne + 1, f32::NAN);
        let opts = RouteOptions {
            renormalise: renorm,
            logits: Some(&written),
        };
        let partials = upload(dev, &partials);
        routing.route(dev, &partials, shape, n, opts).unwrap();
        let (want_ids, want_w): (Vec<u32>, Vec<f64>) = logits
            .chunks(ne)
            .flat_map(|row| ops::route(&widen(row), k, renorm))
            .map(|(e, w)| (e as u32, w))
            .unzip();
        let what = format!("n={n}, {ne} experts, top-{k}, {shape:?} on {}", dev.name());
        let written = written.to_vec().unwrap();
        assert_same(&bits(&written[..n * ne]), &bits(logits), &what);
        assert!(
            written[n * ne].is_nan(),
            "{what}: logits past row {n} written"
        );
        let ids = routing.ids.to_vec().unwrap();
        assert_eq!(ids[..], want_ids[..], "top-k ids, {what}");
        let w = routing.weights.to_vec().unwrap();
        assert_close(&format!("routing weights {what}"), dev, &w, &want_w, 1e-6);
        check_grouping(&routing, &want_ids, ne, k, &what);
    }
}

#[test]
fn router_topk_and_grouping_are_exact() {
    for dev in devices() {
        for (ci, &n) in ROWS.iter().enumerate() {
            for (k, renorm) in [(2, true), (3, false)] {
                let c = Case::new(&dev, n, k, 10 + ci as u64);
                check_routing(&dev, &c.logits, n, N_EXPERT, k, renorm);
                let (want_ids, _) = route_ref(&c.logits, k, renorm);
                for e in UNUSED {
                    assert!(!want_ids.contains(&(e as u32)), "expert {e} must be unused");
                }
            }
        }
    }
}

/// NaN router logits (a NaN hidden state upstream) are garbage in, but must not become an
/// out-of-range expert id: the grouping would then write outside its buffers. Every token's
/// ids stay distinct experts below `n_expert` (the grouping then checks out as usual), for a
/// token all NaN, one with NaN in some lanes, and one with NaN from a single part.
#[test]
fn nan_router_logits_still_pick_valid_experts() {
    for dev in devices() {
        let (n, ne, k) = (6usize, 128usize, 8usize);
        let mut r = rng(77);
        let mut logits = r.normal_vec(n * ne, 1.0);
        logits[ne..2 * ne].fill(f32::NAN);
        for e in (0..ne).step_by(3) {
            logits[3 * ne + e] = f32::NAN;
        }
        let mut partials = split_logits(&logits, ne);
        // Token 4: finite logits, one NaN part for expert 5.
        partials[4 * 3 * ne + ne + 5] = f32::NAN;
        let three = PartialShape {
            parts: 3,
            segments: 1,
        };
        for (shape, partials) in [(PartialShape::LOGITS, logits.clone()), (three, partials)] {
            let mut routing = Routing::new(&dev, n, ne, k).unwrap();
            routing.ids.write(&vec![u32::MAX; n * k]).unwrap();
            let opts = RouteOptions {
                renormalise: true,
                logits: None,
            };
            let partials = upload(&dev, &partials);
            routing.route(&dev, &partials, shape, n, opts).unwrap();
            let ids = routing.ids.to_vec().unwrap();
            let what = format!("NaN logits, {shape:?} on {}", dev.name());
            assert_valid_distinct_ids(&ids, k, ne, &what);
            check_grouping(&routing, &ids, ne, k, &what);
        }
    }
}

/// Model-scale routing: experts spread over several words per lane (60: not a multiple of 32;
/// 128 as in Qwen3-30B-A3B), top-8, and enough pairs for several grouping chunks (and blocks
/// of chunks) whose per-expert rows must be stitched in chunk order. A third of the tokens
/// favour experts 0-3, so those span several tiles; exact ties are planted.
#[test]
fn routing_at_model_scale_spans_chunks() {
    use gpu_kernels::moe::{GROUP_CHUNK_PAIRS, GROUP_WARPS};
    for dev in devices() {
        for (ne, n) in [(60, 700), (128, 1100)] {
            let mut r = rng(ne as u64);
            let mut logits = r.normal_vec(n * ne, 1.0);
            for (t, row) in logits.chunks_mut(ne).enumerate() {
                if t % 3 == 0 {
                    row[t % 4] += 4.0;
                }
                if t % 5 == 0 {
                    // A tie at the top, across lanes: expert 33 must come first.
                    row[ne - 1] = row[0] + 5.0;
                    row[33] = row[ne - 1];
                }
            }
            assert!(
                n * 8 > GROUP_WARPS * GROUP_CHUNK_PAIRS,
                "several blocks of chunks"
            );
            check_routing(&dev, &logits, n, ne, 8, ne == 128);
        }
    }
}

/// What the expert chain produced, stage by stage.
struct Chain {
    /// Gathered rows `[pairs][HIDDEN]`, gate|up + SwiGLU `[pairs][FF]`, down projections
    /// `[pairs][HIDDEN]` (all bf16 bits), and the residual stream after the combine.
    xg: Vec<u16>,
    h: Vec<u16>,
    out: Vec<u16>,
    y: Vec<f32>,
    routing: Routing,
}

/// Runs the whole MoE chain for `c` as the pipeline does. Every intermediate starts poisoned,
/// with one row more than the chain writes, which must stay poisoned.
fn run_chain(c: &Case, shared: bool, resid: &[f32], sh_out: &[f32], sh_gate: &[f32]) -> Chain {
    let (dev, n, k) = (&c.dev, c.n, c.k);
    let pairs = n * k;
    let routing = Routing::new(dev, n, N_EXPERT, k).unwrap();
    let opts = RouteOptions {
        renormalise: true,
        logits: None,
    };
    routing
        .route(dev, &upload(dev, &c.logits), PartialShape::LOGITS, n, opts)
        .unwrap();
    let x = tma_upload(dev, &c.x.0, n, HIDDEN);
    let w_gate_up = tma_upload(
        dev,
        &c.gate_up_bits(),
        N_EXPERT * interleaved_rows(FF),
        HIDDEN,
    );
    let w_down = tma_upload(dev, &c.down.0, N_EXPERT * HIDDEN, FF);
    let xg = grouped(dev, poisoned_tma(dev, pairs + 1, HIDDEN));
    routing.gather(dev, &x, &xg, shape(n)).unwrap();
    let h = grouped(dev, poisoned_tma(dev, pairs + 1, FF));
    routing
        .experts_swiglu(dev, &xg, &w_gate_up, &h, shape(n))
        .unwrap();
    let out = poisoned(dev, (pairs + 1) * HIDDEN, BF16_POISON);
    routing
        .experts_down(dev, &h, &w_down, &out, shape(n))
        .unwrap();
    let y = upload(dev, resid);
    let (so, sg) = (upload(dev, sh_out), upload(dev, sh_gate));
    routing
        .combine(dev, &out, shared.then_some((&so, &sg)), &y, shape(n))
        .unwrap();

    let (xg, h, out) = (
        xg.data().to_vec().unwrap(),
        h.data().to_vec().unwrap(),
        out.to_vec().unwrap(),
    );
    assert!(
        xg[pairs * HIDDEN..].iter().all(|b| *b == BF16_POISON),
        "xg row {pairs} written"
    );
    assert!(
        h[pairs * FF..].iter().all(|b| *b == BF16_POISON),
        "h row {pairs} written"
    );
    assert!(
        out[pairs * HIDDEN..].iter().all(|b| *b == BF16_POISON),
        "out row {pairs} written"
    );
    Chain {
        xg: xg[..pairs * HIDDEN].to_vec(),
        h: h[..pairs * FF].to_vec(),
        out: out[..pairs * HIDDEN].to_vec(),
        y: y.to_vec().unwrap(),
        routing,
    }
}

#[test]
fn grouped_expert_gemms_and_combine_match_f64() {
    for dev in devices() {
        for (ci, &n) in ROWS.iter().enumerate() {
            let k = 2;
            let c = Case::new(&dev, n, k, 100 + ci as u64);
            let mut r = rng(200 + ci as u64);
            let resid = r.normal_vec(n * HIDDEN, 1.0);
            let sh_out = r.normal_vec(n * HIDDEN, 1.0);
            let sh_gate = r.normal_vec(n, 2.0);
            for shared in [false, true] {
                let chain = run_chain(&c, shared, &resid, &sh_out, &sh_gate);
                let routing = &chain.routing;
                let (ids, sorted) = (
                    routing.ids.to_vec().unwrap(),
                    routing.sorted.to_vec().unwrap(),
                );
                let weights = routing.weights.to_vec().unwrap();
                let row_of_pair = routing.row_of_pair.to_vec().unwrap();
                let grouped: Vec<(usize, usize)> = sorted[..n * k]
                    .iter()
                    .map(|&p| (p as usize / k, ids[p as usize] as usize))
                    .collect();

                // Gather: each grouped row is its token's row, bit for bit.
                for (row, &(t, _)) in grouped.iter().enumerate() {
                    assert_same(
                        &chain.xg[row * HIDDEN..][..HIDDEN],
                        &c.x.0[t * HIDDEN..][..HIDDEN],
                        &format!("gathered row {row} (token {t}), n={n}"),
                    );
                }
                // Gate/up + SwiGLU per grouped row, from its token and its expert.
                let mut want_h = vec![0.0; n * k * FF];
                for (row, &(t, e)) in grouped.iter().enumerate() {
                    let xr = &c.x.1[t * HIDDEN..][..HIDDEN];
                    for f in 0..FF {
                        let w = (e * FF + f) * HIDDEN;
                        let gv = dot(xr, &c.gate.1[w..w + HIDDEN]);
                        let uv = dot(xr, &c.up.1[w..w + HIDDEN]);
                        want_h[row * FF + f] = ops::swiglu(gv, uv);
                    }
                }
                let name = format!("grouped gate|up + SwiGLU n={n}");
                assert_bf16_close(&name, &dev, &chain.h, &want_h, 3e-5);
                // Down projection of each grouped row with its expert (from the kernel's h).
                let hr = bf16_values(&chain.h);
                let mut want_out = vec![0.0; n * k * HIDDEN];
                for (row, &(_, e)) in grouped.iter().enumerate() {
                    for o in 0..HIDDEN {
                        let w = &c.down.1[(e * HIDDEN + o) * FF..][..FF];
                        want_out[row * HIDDEN + o] = dot(&hr[row * FF..][..FF], w);
                    }
                }
                let name = format!("grouped down n={n}");
                assert_bf16_close(&name, &dev, &chain.out, &want_out, 1e-5);
                // Scatter-reduce from the kernel's own inputs (the bf16 expert rows, exact in
                // f64): slot order, shared expert last.
                let out = bf16_values(&chain.out);
                let mut want_y = vec![0.0; n * HIDDEN];
                for t in 0..n {
                    for d in 0..HIDDEN {
                        let mut acc: f64 = (0..k)
                            .map(|s| {
                                let row = row_of_pair[t * k + s] as usize;
                                f64::from(weights[t * k + s]) * out[row * HIDDEN + d]
                            })
                            .sum();
                        if shared {
                            acc += ops::sigmoid(f64::from(sh_gate[t]))
                                * f64::from(sh_out[t * HIDDEN + d]);
                        }
                        want_y[t * HIDDEN + d] = f64::from(resid[t * HIDDEN + d]) + acc;
                    }
                }
                let name = format!("combine n={n} shared={shared}");
                assert_close(&name, &dev, &chain.y, &want_y, 2e-6);
            }
        }
    }
}

#[test]
fn moe_chain_is_batch_invariant() {
    for dev in devices() {
        for (ci, &n) in ROWS.iter().enumerate().skip(1) {
            let c = Case::new(&dev, n, 2, 300 + ci as u64);
            let mut r = rng(400 + ci as u64);
            let resid = r.normal_vec(n * HIDDEN, 1.0);
            let sh_out = r.normal_vec(n * HIDDEN, 1.0);
            let sh_gate = r.normal_vec(n, 2.0);
            let y = run_chain(&c, true, &resid, &sh_out, &sh_gate).y;
            // Token 1 and the last token alone: same routing, other expert groups and tile
            // positions, same bits.
            for t in [1, n - 1] {
                let span = t * HIDDEN..(t + 1) * HIDDEN;
                let alone = Case {
                    dev: dev.clone(),
                    n: 1,
                    k: 2,
                    logits: c.logits[t * N_EXPERT..(t + 1) * N_EXPERT].to_vec(),
                    x: (c.x.0[span.clone()].to_vec(), c.x.1[span.clone()].to_vec()),
                    gate: c.gate.clone(),
                    up: c.up.clone(),
                    down: c.down.clone(),
                };
                let y1 = run_chain(
                    &alone,
                    true,
                    &resid[span.clone()],
                    &sh_out[span.clone()],
                    &sh_gate[t..t + 1],
                )
                .y;
                let what = format!("MoE chain: token {t} alone vs in {n} on {}", dev.name());
                assert_same(&bits(&y1), &bits(&y[span]), &what);
            }
        }
    }
}

#[test]
fn moe_shapes_are_checked_before_launching() {
    let dev = Device::emulator();
    let routing = Routing::new(&dev, 4, N_EXPERT, 2).unwrap();
    let x = poisoned_tma(&dev, 4, HIDDEN);
    let xg = poisoned_tma(&dev, 8, HIDDEN);
    let e = routing.gather(&dev, &x, &xg, shape(5)).unwrap_err();
    assert!(
        e.to_string()
            .contains("5 tokens exceed the routing buffers"),
        "{e}"
    );
    let e = routing
        .gather(&dev, &x, &poisoned_tma(&dev, 7, HIDDEN), shape(4))
        .unwrap_err();
    assert!(e.to_string().contains("xg is 7 × 128"), "{e}");
    let h = grouped(&dev, poisoned_tma(&dev, 8, FF));
    let wgu = poisoned_tma(&dev, N_EXPERT * interleaved_rows(FF), HIDDEN);
    // A map whose boxes are not one grouped tile is refused as a grouped operand.
    let short = xg.reboxed(&dev, 64).unwrap();
    let e = routing
        .experts_swiglu(&dev, &short, &wgu, &h, shape(4))
        .unwrap_err();
    assert!(
        e.to_string().contains("xg is read in boxes of 64 rows"),
        "{e}"
    );
    let xg = grouped(&dev, short);
    let wgu = poisoned_tma(&dev, N_EXPERT * interleaved_rows(FF) - 1, HIDDEN);
    let e = routing
        .experts_swiglu(&dev, &xg, &wgu, &h, shape(4))
        .unwrap_err();
    assert!(e.to_string().contains("w_gate_up is 2047 × 128"), "{e}");
    let wd = poisoned_tma(&dev, N_EXPERT * HIDDEN, FF + 8);
    let out = poisoned(&dev, 8 * HIDDEN, BF16_POISON);
    let e = routing
        .experts_down(&dev, &h, &wd, &out, shape(4))
        .unwrap_err();
    assert!(e.to_string().contains("w_down is 1024 × 104"), "{e}");
    let e = Routing::new(&dev, 4, 2000, 2).err().unwrap();
    assert!(e.to_string().contains("at most 1024 experts"), "{e}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}

/// `m` read in the grouped GEMMs' 64-row boxes.
fn grouped(dev: &Device, m: kiln::gpu::TmaMatrix) -> kiln::gpu::TmaMatrix {
    m.reboxed(dev, gpu_kernels::gemm_wgmma::GROUPED_BM as u32)
        .expect("reboxing a test matrix")
}
