//! MoE kernels one by one against the float64 references (`kiln::reference::ops`) at
//! N ∈ {1, 5, 33, 257}: router top-k
//! (with planted exact ties → lower expert id), the expert grouping and its tile table, the
//! grouped gate/up (+SwiGLU) and down GEMMs, and the one-launch weighted scatter-reduce with the
//! shared expert last; then the whole chain for the last token alone vs inside the batch, bit
//! for bit.
//!
//! Tolerances: top-k ids and the grouping are exact; routing weights are one f32 softmax
//! (ex2.approx) from exact: 1e-6; the grouped GEMMs round their activations to bf16 like every
//! tensor-core GEMM (the reference does the same), leaving f32 accumulation error: 5e-6; the
//! combine is a handful of f32 fmas: 2e-6.

mod common;
use common::*;
use kiln::gpu::Device;
use kiln::gpu::ops::moe::{MoeShape, Routing};
use kiln::reference::ops::{self, dot, widen};

const ROWS: [usize; 4] = [1, 5, 33, 257];
const N_EXPERT: usize = 8;
const HIDDEN: usize = 128;
const FF: usize = 96;

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
    x: Vec<f32>,
    gate: (Vec<u16>, Vec<f64>),
    up: (Vec<u16>, Vec<f64>),
    down: (Vec<u16>, Vec<f64>),
}

impl Case {
    fn new(dev: &Device, n: usize, k: usize, salt: u64) -> Case {
        let mut r = rng(salt);
        let mut logits = r.normal_vec(n * N_EXPERT, 1.0);
        // Plant exact ties: token t's expert 5 equals its expert 2 for every third token.
        for t in (0..n).step_by(3) {
            logits[t * N_EXPERT + 5] = logits[t * N_EXPERT + 2];
        }
        Case {
            dev: dev.clone(),
            n,
            k,
            logits,
            x: r.normal_vec(n * HIDDEN, 1.0),
            gate: bf16_bits_and_values(
                &r.normal_vec(N_EXPERT * FF * HIDDEN, 1.0 / (HIDDEN as f64).sqrt()),
            ),
            up: bf16_bits_and_values(
                &r.normal_vec(N_EXPERT * FF * HIDDEN, 1.0 / (HIDDEN as f64).sqrt()),
            ),
            down: bf16_bits_and_values(
                &r.normal_vec(N_EXPERT * HIDDEN * FF, 1.0 / (FF as f64).sqrt()),
            ),
        }
    }
}

#[test]
fn router_topk_and_grouping_are_exact() {
    for dev in devices() {
        for (ci, &n) in ROWS.iter().enumerate() {
            for (k, renorm) in [(2, true), (3, false)] {
                let c = Case::new(&dev, n, k, 10 + ci as u64);
                let routing = Routing::new(&dev, n, N_EXPERT, k).unwrap();
                routing
                    .route(&dev, &upload(&dev, &c.logits), n, renorm)
                    .unwrap();
                let (want_ids, want_w) = route_ref(&c.logits, k, renorm);
                let ids = routing.ids.to_vec().unwrap();
                assert_eq!(
                    ids[..n * k],
                    want_ids[..],
                    "top-{k} ids, n={n} on {}",
                    dev.name()
                );
                let w = routing.weights.to_vec().unwrap();
                assert_close(
                    &format!("routing weights n={n}"),
                    &dev,
                    &w[..n * k],
                    &want_w,
                    1e-6,
                );

                // Grouping: stable by (expert, pair id), offsets are prefix counts, the tile
                // table covers each expert's rows in 64-row tiles.
                let mut pairs: Vec<(u32, u32)> =
                    (0..n * k).map(|p| (want_ids[p], p as u32)).collect();
                pairs.sort();
                let sorted = routing.sorted.to_vec().unwrap();
                let want_sorted: Vec<u32> = pairs.iter().map(|p| p.1).collect();
                assert_eq!(sorted[..n * k], want_sorted[..], "grouped order, n={n}");
                let row_of_pair = routing.row_of_pair.to_vec().unwrap();
                for (row, &p) in want_sorted.iter().enumerate() {
                    assert_eq!(row_of_pair[p as usize] as usize, row);
                }
                let mut offsets = vec![0u32; N_EXPERT + 1];
                for &id in &want_ids {
                    offsets[id as usize + 1] += 1;
                }
                for e in 0..N_EXPERT {
                    offsets[e + 1] += offsets[e];
                }
                assert_eq!(routing.offsets.to_vec().unwrap(), offsets, "offsets, n={n}");
                let mut tiles = Vec::new();
                for e in 0..N_EXPERT {
                    tiles.extend(
                        (offsets[e]..offsets[e + 1])
                            .step_by(64)
                            .flat_map(|f| [e as u32, f]),
                    );
                }
                let num = routing.num_tiles.to_vec().unwrap()[0] as usize;
                assert_eq!(num * 2, tiles.len());
                assert_eq!(
                    routing.tiles.to_vec().unwrap()[..tiles.len()],
                    tiles[..],
                    "tile table"
                );
            }
        }
    }
}

/// Runs the expert chain for `c` and returns (h, expert_out, y) and the routing.
fn run_chain(
    c: &Case,
    shared: bool,
    resid: &[f32],
    sh_out: &[f32],
    sh_gate: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Routing) {
    let (dev, n, k) = (&c.dev, c.n, c.k);
    let routing = Routing::new(dev, n, N_EXPERT, k).unwrap();
    routing
        .route(dev, &upload(dev, &c.logits), n, true)
        .unwrap();
    let x = upload(dev, &c.x);
    let (g, u, d) = (
        upload(dev, &c.gate.0),
        upload(dev, &c.up.0),
        upload(dev, &c.down.0),
    );
    let h = poisoned(dev, n * k * FF, f32::NAN);
    routing
        .experts_gated(dev, &x, &g, &u, &h, shape(n))
        .unwrap();
    let out = poisoned(dev, n * k * HIDDEN, f32::NAN);
    routing.experts_down(dev, &h, &d, &out, shape(n)).unwrap();
    let y = upload(dev, resid);
    let (so, sg) = (upload(dev, sh_out), upload(dev, sh_gate));
    routing
        .combine(dev, &out, shared.then_some((&so, &sg)), &y, shape(n))
        .unwrap();
    (
        h.to_vec().unwrap(),
        out.to_vec().unwrap(),
        y.to_vec().unwrap(),
        routing,
    )
}

#[test]
fn grouped_expert_gemms_and_combine_match_f64() {
    for dev in devices() {
        for (ci, &n) in ROWS.iter().enumerate() {
            let c = Case::new(&dev, n, 2, 100 + ci as u64);
            let mut r = rng(200 + ci as u64);
            let resid = r.normal_vec(n * HIDDEN, 1.0);
            let sh_out = r.normal_vec(n * HIDDEN, 1.0);
            let sh_gate = r.normal_vec(n, 2.0);
            for shared in [false, true] {
                let (h, out, y, routing) = run_chain(&c, shared, &resid, &sh_out, &sh_gate);
                let (ids, sorted) = (
                    routing.ids.to_vec().unwrap(),
                    routing.sorted.to_vec().unwrap(),
                );
                let weights = routing.weights.to_vec().unwrap();
                let row_of_pair = routing.row_of_pair.to_vec().unwrap();
                let x = widen(&bf16_rounded(&c.x));
                // Gate/up + SwiGLU per grouped row, from its token and its expert.
                let mut want_h = vec![0.0; n * 2 * FF];
                for (row, &p) in sorted[..n * 2].iter().enumerate() {
                    let (t, e) = (p as usize / 2, ids[p as usize] as usize);
                    for f in 0..FF {
                        let w = (e * FF + f) * HIDDEN;
                        let xr = &x[t * HIDDEN..][..HIDDEN];
                        let gv = dot(xr, &c.gate.1[w..w + HIDDEN]);
                        let uv = dot(xr, &c.up.1[w..w + HIDDEN]);
                        want_h[row * FF + f] = ops::swiglu(gv, uv);
                    }
                }
                assert_close(&format!("grouped gate/up n={n}"), &dev, &h, &want_h, 5e-6);
                // Down projection of each grouped row with its expert (from the kernel's h).
                let hr = widen(&bf16_rounded(&h));
                let mut want_out = vec![0.0; n * 2 * HIDDEN];
                for (row, &p) in sorted[..n * 2].iter().enumerate() {
                    let e = ids[p as usize] as usize;
                    for o in 0..HIDDEN {
                        let w = &c.down.1[(e * HIDDEN + o) * FF..][..FF];
                        want_out[row * HIDDEN + o] = dot(&hr[row * FF..][..FF], w);
                    }
                }
                assert_close(&format!("grouped down n={n}"), &dev, &out, &want_out, 5e-6);
                // Scatter-reduce from the kernel's own inputs: slot order, shared expert last.
                let mut want_y = vec![0.0; n * HIDDEN];
                for t in 0..n {
                    for d in 0..HIDDEN {
                        let mut acc: f64 = (0..2)
                            .map(|s| {
                                weights[t * 2 + s] as f64
                                    * out[row_of_pair[t * 2 + s] as usize * HIDDEN + d] as f64
                            })
                            .sum();
                        if shared {
                            acc += ops::sigmoid(f64::from(sh_gate[t]))
                                * f64::from(sh_out[t * HIDDEN + d]);
                        }
                        want_y[t * HIDDEN + d] = resid[t * HIDDEN + d] as f64 + acc;
                    }
                }
                assert_close(
                    &format!("combine n={n} shared={shared}"),
                    &dev,
                    &y,
                    &want_y,
                    2e-6,
                );
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
            let (_, _, y, _) = run_chain(&c, true, &resid, &sh_out, &sh_gate);
            // The last token alone: same routing, other expert groups, same bits.
            let t = n - 1;
            let alone = Case {
                dev: dev.clone(),
                n: 1,
                k: 2,
                logits: c.logits[t * N_EXPERT..].to_vec(),
                x: c.x[t * HIDDEN..].to_vec(),
                gate: c.gate.clone(),
                up: c.up.clone(),
                down: c.down.clone(),
            };
            let (_, _, y1, _) = run_chain(
                &alone,
                true,
                &resid[t * HIDDEN..],
                &sh_out[t * HIDDEN..],
                &sh_gate[t..],
            );
            assert_eq!(
                bits(&y1),
                bits(&y[t * HIDDEN..]),
                "MoE chain: token {t} alone vs in a batch of {n}"
            );
        }
    }
}
