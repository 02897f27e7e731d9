//! The MoE routing stage (`ops::moe_router::Router`: router GEMM + softmax/top-k + grouping)
//! from f32 rows and f32 router weights, against float64 computed here, in both modes of the
//! fast path (split, fused), through the fallback (`gemm_f32` + `Routing::route`), and for
//! batch invariance. Inputs are fresh random values (seeded per run), every output starts
//! poisoned.
//!
//! Expert choice: the kernels' logits are f32 sums over `h` products, so where two experts'
//! float64 logits are closer than f32 rounding can resolve, either order is right. The bound
//! used is the worst case of an fma chain of `h` terms plus `K_SEGMENTS` additions,
//! `(h + 16)·2⁻²⁴·Σ_k |x_k·w_ek|`, which each logit is also checked against; wherever the
//! float64 lead between the kernel's and the reference's expert exceeds twice that bound, the
//! ids must be equal. Near-ties are planted: experts `a` and `b` have identical weight rows but
//! for one element (`w_b[k0] = w_a[k0] + 1/2`), and the token's `x[k0]` sets their exact lead:
//! 1e-2 and 2e-3 (resolvable: must match), 1e-9 (below f32 rounding: either order, but both
//! must be chosen) and 0 (an exact tie in f32 too: the lower id first). The tie tokens lean toward `a` so the pair competes for the top slots.
//! Weights: one f32 softmax (ex2.approx) of logits that are within ~1e-6 of exact: per weight
//! 2e-6 absolute (2.4e-7 seen on the emulator), against float64 of the kernel's chosen ids.

mod common;
use common::*;
use kiln::gpu::ops::moe::Routing;
use kiln::gpu::ops::moe_router::{RouteOptions, Router, RouterMode};
use kiln::gpu::{Buffer, Device};

/// A routing problem: `x` `[n][h]`, `w` `[ne][h]`, with planted near-ties.
struct Problem {
    n: usize,
    ne: usize,
    h: usize,
    k: usize,
    x: Vec<f32>,
    w: Vec<f32>,
}

/// The two near-tied experts and the element they differ in.
fn tie_pair(ne: usize) -> (usize, usize, usize) {
    (ne / 3, ne - 2, 5)
}

/// Planted leads of `b` over `a` (exact, in float64), by token number mod 6 (`None`: no tie).
fn planted_lead(t: usize) -> Option<f64> {
    [Some(1e-2), Some(-2e-3), Some(1e-9), Some(0.0), None, None][t % 6]
}

impl Problem {
    fn new(n: usize, ne: usize, h: usize, k: usize, salt: u64) -> Problem {
        let mut r = rng(salt);
        let mut w = r.normal_vec(ne * h, 1.0 / (h as f64).sqrt());
        let (a, b, k0) = tie_pair(ne);
        let row_a = w[a * h..(a + 1) * h].to_vec();
        w[b * h..(b + 1) * h].copy_from_slice(&row_a);
        w[b * h + k0] = row_a[k0] + 0.5;
        // Expert 1 is favoured by a third of the tokens: several grouped-GEMM tiles of rows.
        let row_1 = w[h..2 * h].to_vec();
        let mut x = r.normal_vec(n * h, 1.0);
        for (t, xt) in x.chunks_mut(h).enumerate() {
            if let Some(lead) = planted_lead(t) {
                for (v, wa) in xt.iter_mut().zip(&row_a) {
                    *v += 8.0 * wa;
                }
                // lead = x[k0] · (w_b[k0] − w_a[k0]) = x[k0] / 2, exactly in float64.
                xt[k0] = (2.0 * lead) as f32;
            } else if t % 3 == 1 {
                for (v, w1) in xt.iter_mut().zip(&row_1) {
                    *v += 4.0 * w1;
                }
            }
        }
        Problem { n, ne, h, k, x, w }
    }

    /// The float64 logit of token `t`, expert `e`, and the f32 rounding bound on it.
    fn logit(&self, t: usize, e: usize) -> (f64, f64) {
        let (xt, we) = (
            &self.x[t * self.h..][..self.h],
            &self.w[e * self.h..][..self.h],
        );
        let (mut dot, mut abs) = (0.0f64, 0.0f64);
        for (&a, &b) in xt.iter().zip(we) {
            dot += f64::from(a) * f64::from(b);
            abs += (f64::from(a) * f64::from(b)).abs();
        }
        (dot, (self.h + 16) as f64 * 2f64.powi(-24) * abs)
    }
}

/// What one routing call produced.
struct Routed {
    ids: Vec<u32>,
    weights: Vec<f32>,
    logits: Vec<f32>,
    routing: Routing,
}

/// Routes `p`'s tokens `rows` (in that order) on `dev` in `mode`, every output poisoned first; the
/// logits buffer has one row more, which must stay poisoned.
fn route(dev: &Device, p: &Problem, rows: &[usize], mode: RouterMode, renorm: bool) -> Routed {
    let (n, ne, h, k) = (rows.len(), p.ne, p.h, p.k);
    let x: Vec<f32> = rows
        .iter()
        .flat_map(|&t| p.x[t * h..(t + 1) * h].iter().copied())
        .collect();
    let mut routing = Routing::new(dev, n, ne, k).unwrap();
    routing.ids.write(&vec![u32::MAX; n * k]).unwrap();
    routing.weights.write(&vec![f32::NAN; n * k]).unwrap();
    routing.sorted.write(&vec![u32::MAX; n * k]).unwrap();
    routing.row_of_pair.write(&vec![u32::MAX; n * k]).unwrap();
    routing.offsets.write(&vec![u32::MAX; ne + 1]).unwrap();
    routing.num_tiles.write(&[u32::MAX]).unwrap();
    let tiles = routing.tiles.len();
    routing.tiles.write(&vec![u32::MAX; tiles]).unwrap();
    let logits: Buffer<f32> = poisoned(dev, (n + 1) * ne, f32::NAN);
    let router = Router::new(dev, n, ne, h).unwrap();
    let opts = RouteOptions {
        renormalise: renorm,
        mode,
        logits: Some(&logits),
    };
    let (xb, wb) = (upload(dev, &x), upload(dev, &p.w));
    router.route(dev, &xb, &wb, &routing, n, opts).unwrap();
    let logits = logits.to_vec().unwrap();
    assert!(
        logits[n * ne..].iter().all(|v| v.is_nan()),
        "logits past row {n} written"
    );
    Routed {
        ids: routing.ids.to_vec().unwrap(),
        weights: routing.weights.to_vec().unwrap(),
        logits: logits[..n * ne].to_vec(),
        routing,
    }
}

/// Checks logits, ids (near-tie aware), weights against float64, and the grouping exactly
/// against the kernel's own ids. `what` names the case.
fn check_against_f64(p: &Problem, got: &Routed, renorm: bool, what: &str) {
    let (ne, k) = (p.ne, p.k);
    let (a, b, _) = tie_pair(ne);
    let mut worst_w = 0.0f64;
    let (mut planted, mut on_top) = (0usize, 0usize);
    for t in 0..p.n {
        let exact: Vec<(f64, f64)> = (0..ne).map(|e| p.logit(t, e)).collect();
        for (e, &(l, bound)) in exact.iter().enumerate() {
            let g = f64::from(got.logits[t * ne + e]);
            assert!(
                (g - l).abs() <= bound,
                "{what}: logit [{t}][{e}] = {g}, float64 {l} (bound {bound:.2e})"
            );
        }
        let mut order: Vec<usize> = (0..ne).collect();
        order.sort_by(|&i, &j| exact[j].0.total_cmp(&exact[i].0).then(i.cmp(&j)));
        let ids: Vec<usize> = got.ids[t * k..(t + 1) * k]
            .iter()
            .map(|&e| e as usize)
            .collect();
        for (s, (&e, &want)) in ids.iter().zip(&order).enumerate() {
            let lead = (exact[e].0 - exact[want].0).abs();
            let resolvable = 2.0 * exact[e].1.max(exact[want].1);
            assert!(
                e == want || lead <= resolvable,
                "{what}: token {t} slot {s} is expert {e}, float64 says {want} (lead {lead:.2e} > {resolvable:.2e})"
            );
        }
        let mut sorted_ids = ids.clone();
        sorted_ids.sort();
        sorted_ids.dedup();
        assert_eq!(sorted_ids.len(), k, "{what}: token {t} repeats an expert");
        // The planted pair is on top for most tokens, not all (x leans on a's row, and at
        // small h another expert can still beat it): check the tie only where float64 puts
        // a and b first with a resolvable gap to the third.
        let tie_on_top = k >= 2
            && ne >= 3
            && planted_lead(t).is_some()
            && order[..2].contains(&a)
            && order[..2].contains(&b)
            && exact[order[1]].0 - exact[order[2]].0
                > 2.0 * exact[order[1]].1.max(exact[order[2]].1);
        if planted_lead(t).is_some() {
            planted += 1;
            on_top += tie_on_top as usize;
        }
        if planted_lead(t) == Some(0.0) && tie_on_top {
            // x[k0] = 0: the two f32 sums are the same operations on the same values.
            let (la, lb) = (got.logits[t * ne + a], got.logits[t * ne + b]);
            assert_eq!(la.to_bits(), lb.to_bits(), "{what}: token {t}: exact tie");
            assert_eq!(
                ids[..2],
                [a, b],
                "{what}: token {t}: a tie goes to the lower id"
            );
        }
        if tie_on_top {
            assert!(
                ids[..2].contains(&a) && ids[..2].contains(&b),
                "{what}: token {t}: the near-tied experts {a}, {b} are not its top two: {ids:?}"
            );
        }
        // Weights from float64 logits, for the experts the kernel chose.
        let m = exact.iter().map(|v| v.0).fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = exact.iter().map(|v| (v.0 - m).exp()).sum();
        let probs: Vec<f64> = ids.iter().map(|&e| (exact[e].0 - m).exp() / z).collect();
        let total: f64 = probs.iter().sum();
        for (s, &pr) in probs.iter().enumerate() {
            let want = if renorm { pr / total } else { pr };
            let g = f64::from(got.weights[t * k + s]);
            worst_w = worst_w.max((g - want).abs());
            assert!(
                (g - want).abs() <= 2e-6,
                "{what}: weight [{t}][{s}] = {g}, float64 {want}"
            );
        }
    }
    eprintln!("{what}: worst weight error {worst_w:.2e}; planted ties on top {on_top}/{planted}");
    assert!(
        k < 2 || ne < 3 || 2 * on_top >= planted,
        "{what}: the planted tie was on top for only {on_top} of {planted} tokens"
    );
    check_grouping(&got.routing, &got.ids, ne, k, what);
}

/// (experts, hidden, tokens, top-k, renormalise): the model's 128 experts with top-8; 60
/// (lanes partly empty); 200 (the 256-expert kernels); 8 experts top-2. Hidden sizes leave
/// the last K segment short (200, 104) or empty (40: four segments of 16, 8 past the end).
const CASES: [(usize, usize, usize, usize, bool); 4] = [
    (128, 200, 300, 8, true),
    (60, 104, 77, 4, false),
    (200, 64, 45, 8, true),
    (8, 40, 33, 2, true),
];

#[test]
fn fast_router_matches_f64_with_near_ties() {
    for dev in devices() {
        for (ci, &(ne, h, n, k, renorm)) in CASES.iter().enumerate() {
            let p = Problem::new(n, ne, h, k, 10 + ci as u64);
            let rows: Vec<usize> = (0..n).collect();
            let split = route(&dev, &p, &rows, RouterMode::Split, renorm);
            let what = format!(
                "split, {ne} experts, h={h}, n={n}, top-{k} on {}",
                dev.name()
            );
            check_against_f64(&p, &split, renorm, &what);
            let fused = route(&dev, &p, &rows, RouterMode::Fused, renorm);
            let what = format!(
                "fused, {ne} experts, h={h}, n={n}, top-{k} on {}",
                dev.name()
            );
            check_against_f64(&p, &fused, renorm, &what);
            // The two modes fold the same segments in the same order: same bits.
            assert_same(&bits(&split.logits), &bits(&fused.logits), &what);
            assert_eq!(split.ids, fused.ids, "{what}: ids split vs fused");
            assert_same(&bits(&split.weights), &bits(&fused.weights), &what);
        }
    }
}

/// Each token's logits, ids and weights (bits) are the same routed alone, in batches of 7, 64
/// and 300, at other positions (a rotated order), and in either mode.
#[test]
fn fast_router_is_batch_invariant() {
    for dev in devices() {
        for (ci, &(ne, h, k)) in [(128, 200, 8), (200, 64, 4)].iter().enumerate() {
            let p = Problem::new(300, ne, h, k, 50 + ci as u64);
            let all: Vec<usize> = (0..300).collect();
            let base = route(&dev, &p, &all, RouterMode::Split, true);
            let mut batches: Vec<(Vec<usize>, RouterMode)> = vec![
                (vec![0], RouterMode::Split),
                (vec![299], RouterMode::Fused),
                (vec![137], RouterMode::Auto),
                ((100..107).collect(), RouterMode::Split),
                ((3..10).rev().collect(), RouterMode::Fused),
                ((200..264).collect(), RouterMode::Fused),
                ((13..77).collect(), RouterMode::Split),
                (
                    (0..300).map(|t| (t + 17) % 300).collect(),
                    RouterMode::Fused,
                ),
                (
                    (0..300).map(|t| (t * 7 + 5) % 300).collect(),
                    RouterMode::Auto,
                ),
            ];
            batches.push((all.clone(), RouterMode::Fused));
            for (rows, mode) in &batches {
                let got = route(&dev, &p, rows, *mode, true);
                for (i, &t) in rows.iter().enumerate() {
                    let what = format!(
                        "{ne} experts: token {t} at {i} of {} ({mode:?}) vs in 300 on {}",
                        rows.len(),
                        dev.name()
                    );
                    assert_same(
                        &bits(&got.logits[i * ne..(i + 1) * ne]),
                        &bits(&base.logits[t * ne..(t + 1) * ne]),
                        &what,
                    );
                    assert_eq!(
                        got.ids[i * k..(i + 1) * k],
                        base.ids[t * k..(t + 1) * k],
                        "{what}: ids"
                    );
                    assert_same(
                        &bits(&got.weights[i * k..(i + 1) * k]),
                        &bits(&base.weights[t * k..(t + 1) * k]),
                        &what,
                    );
                }
                let what = format!("{ne} experts, batch of {} ({mode:?})", rows.len());
                check_grouping(&got.routing, &got.ids, ne, k, &what);
            }
        }
    }
}

/// More experts than the fast path takes (300), or a hidden size that is not a multiple of 4
/// (102): `gemm_f32` + `Routing::route`, checked the same way.
#[test]
fn router_fallback_matches_f64() {
    for dev in devices() {
        for (ci, &(ne, h, n, k)) in [(300, 64, 40, 8), (16, 102, 50, 4)].iter().enumerate() {
            assert!(!Router::new(&dev, n, ne, h).unwrap().is_fast());
            let p = Problem::new(n, ne, h, k, 80 + ci as u64);
            let rows: Vec<usize> = (0..n).collect();
            let got = route(&dev, &p, &rows, RouterMode::Auto, true);
            let what = format!("fallback, {ne} experts, h={h} on {}", dev.name());
            check_against_f64(&p, &got, true, &what);
        }
    }
}

#[test]
fn router_shapes_are_checked_before_launching() {
    let dev = Device::emulator();
    let router = Router::new(&dev, 4, 8, 32).unwrap();
    assert!(router.is_fast());
    let routing = Routing::new(&dev, 4, 8, 2).unwrap();
    let (x, w) = (
        poisoned(&dev, 4 * 32, 0.5f32),
        poisoned(&dev, 8 * 32, 0.5f32),
    );
    let opts = RouteOptions::default();
    let e = router.route(&dev, &x, &w, &routing, 5, opts).unwrap_err();
    assert!(e.to_string().contains("5 tokens exceed"), "{e}");
    let short = poisoned(&dev, 8 * 32 - 1, 0.5f32);
    let e = router
        .route(&dev, &x, &short, &routing, 4, opts)
        .unwrap_err();
    assert!(e.to_string().contains("w has 255 elements"), "{e}");
    let other = Routing::new(&dev, 4, 16, 2).unwrap();
    let e = router.route(&dev, &x, &w, &other, 4, opts).unwrap_err();
    assert!(e.to_string().contains("for 16 experts"), "{e}");
    assert_eq!(
        dev.launch_count(),
        0,
        "nothing may launch after a failed check"
    );
}
