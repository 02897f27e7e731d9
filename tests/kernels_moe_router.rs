//! The MoE routing stage (`ops::moe_router::Router`: the router GEMM on tensor cores +
//! softmax/top-k + grouping) from bf16 rows and f32 router weights, against float64 computed
//! here, through the fast path (finish + scan/place) and the fallback (`Routing::route`, more
//! than `FAST_MAX_EXPERTS` experts), and for batch invariance. Inputs are fresh random values
//! (seeded per run), every output starts poisoned.
//!
//! The defined input is the bf16 row (what the experts read too) and the f32 weights: the
//! float64 reference is the exact dot product of the bf16-rounded `x` with the f32 `w`. The
//! kernel computes it as three f32 accumulations of exact products (`x` times each bf16 part
//! of `w`, whose sum is `w` exactly), added lo + mid, then + hi. Bound: the fma-chain worst
//! case `(h + 16)·2⁻²⁴·Σ_k |x_k·w_ek|`, which each logit is also checked against. The GEMM
//! rounds its accumulator once per k16 `wgmma` step (the emulator: exact in f64, rounded
//! once; the hardware: a truncated sum of the 16 exact products, within two ulps of the
//! accumulator), so the hi part's error is at most about `(h/8)·2⁻²⁴·Σ|x·w|`, the smaller
//! parts' 2⁸ and 2¹⁶ times less, and the two additions two ulps of the logit: the bound
//! holds with several times to spare. Expert choice: wherever the float64 lead between the
//! kernel's and the reference's expert exceeds twice that bound, the ids must be equal.
//! Near-ties are planted: experts `a` and `b` have identical weight rows but for one element
//! (`w_b[k0] = w_a[k0] + 1/2`), and the token's `x[k0]` (a bf16 value) sets their exact lead
//! to about 1e-2 and 2e-3 (resolvable: must match), 1e-9 (below f32 rounding: either order,
//! but both must be chosen) and 0 (an exact tie in f32 too: the lower id first). The tie
//! tokens lean toward `a` so the pair competes for the top slots.
//! Weights: one f32 softmax (ex2.approx) of logits that are within ~1e-6 of exact: per weight
//! 2e-6 absolute (2.4e-7 seen on the emulator), against float64 of the kernel's chosen ids.

mod common;
use common::*;
use gpu_kernels::moe_router::{SEGMENT_K, key_logit, logit_key};
use kiln::gpu::ops::moe::{RouteOptions, Routing};
use kiln::gpu::ops::moe_router::{Router, RouterWeights};
use kiln::gpu::{Buffer, Device};

/// A routing problem: `x` `[n][h]` (bf16 values), `w` `[ne][h]` (f32), with planted
/// near-ties.
struct Problem {
    n: usize,
    ne: usize,
    h: usize,
    k: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    /// The router GEMM's K segment width (`SEGMENT_K`, or narrower to make several).
    seg_k: usize,
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
                // lead = x[k0] · (w_b[k0] − w_a[k0]) = x[k0] / 2, exactly in float64 (x[k0]
                // is rounded to bf16 below: the lead is that of the rounded value).
                xt[k0] = (2.0 * lead) as f32;
            } else if t % 3 == 1 {
                for (v, w1) in xt.iter_mut().zip(&row_1) {
                    *v += 4.0 * w1;
                }
            }
        }
        let x = bf16_rounded(&x);
        let seg_k = SEGMENT_K;
        Problem {
            n,
            ne,
            h,
            k,
            x,
            w,
            seg_k,
        }
    }

    /// The same problem routed with K segments of `seg_k` hidden columns.
    fn with_segment_k(self, seg_k: usize) -> Problem {
        Problem { seg_k, ..self }
    }

    /// The float64 logit of token `t`, expert `e`, and the f32 rounding bound on it (a sum
    /// in K segments adds at most `16` roundings more than one chain of `h`).
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

/// Routes `p`'s tokens `rows` (in that order) on `dev` with a new router, every output
/// poisoned first; the logits buffer has one row more, which must stay poisoned.
fn route(dev: &Device, p: &Problem, rows: &[usize], renorm: bool) -> Routed {
    let router = Router::with_segment_k(dev, (rows.len(), p.ne, p.h), p.seg_k).unwrap();
    route_with(dev, &router, p, rows, renorm)
}

/// [`route`] with a given router (one used for several calls).
fn route_with(dev: &Device, router: &Router, p: &Problem, rows: &[usize], renorm: bool) -> Routed {
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
    let opts = RouteOptions {
        renormalise: renorm,
        logits: Some(&logits),
    };
    let xb = tma_upload(dev, &bf16_bits(&x), n, h);
    let wb = RouterWeights::new(dev, &upload(dev, &p.w), ne, h).unwrap();
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
    let (mut worst_w, mut worst_l) = (0.0f64, 0.0f64);
    let (mut planted, mut on_top) = (0usize, 0usize);
    for t in 0..p.n {
        let exact: Vec<(f64, f64)> = (0..ne).map(|e| p.logit(t, e)).collect();
        for (e, &(l, bound)) in exact.iter().enumerate() {
            let g = f64::from(got.logits[t * ne + e]);
            worst_l = worst_l.max((g - l).abs() / bound);
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
    eprintln!(
        "{what}: worst logit error {worst_l:.2e} of its bound, worst weight error \
         {worst_w:.2e}; planted ties on top {on_top}/{planted}"
    );
    assert!(
        k < 2 || ne < 3 || 2 * on_top >= planted,
        "{what}: the planted tie was on top for only {on_top} of {planted} tokens"
    );
    check_grouping(&got.routing, &got.ids, ne, k, what);
}

/// (experts, hidden, tokens, top-k, renormalise, K segment): the model's 128 experts with
/// top-8; 60 (lanes partly empty); 200 (the 256-expert finish kernel); 8 experts top-2. Hidden
/// sizes leave the GEMM's last 64-wide K slice part empty (200, 104, 40: zero-filled by TMA),
/// and the token counts a partial last tile of 128 rows and of `TILE_TOKENS` tokens. K
/// segments of 64 columns make 4 partial sums per part at hidden 200 (the last one 8 columns
/// wide) and exactly one at 64.
const CASES: [(usize, usize, usize, usize, bool, usize); 4] = [
    (128, 200, 300, 8, true, 64),
    (60, 104, 77, 4, false, SEGMENT_K),
    (200, 64, 45, 8, true, 64),
    (8, 40, 33, 2, true, SEGMENT_K),
];

#[test]
fn fast_router_matches_f64_with_near_ties() {
    for dev in devices() {
        for (ci, &(ne, h, n, k, renorm, seg_k)) in CASES.iter().enumerate() {
            assert!(Router::new(&dev, n, ne, h).unwrap().is_fast());
            let p = Problem::new(n, ne, h, k, 10 + ci as u64).with_segment_k(seg_k);
            let rows: Vec<usize> = (0..n).collect();
            let got = route(&dev, &p, &rows, renorm);
            let what = format!(
                "{ne} experts, h={h} in segments of {seg_k}, n={n}, top-{k} on {}",
                dev.name()
            );
            check_against_f64(&p, &got, renorm, &what);
        }
    }
}

/// Each token's logits, ids and weights (bits) are the same routed alone, in batches of 7, 64
/// and 300, and at other positions (a rotated order: another row of the GEMM's tile and of
/// the finish kernel's tile). The GEMM's tile width (narrow or wide, chosen from the row
/// count) gives the same bits too: `kernels_gemm_wgmma` checks narrow against wide. Every
/// batch goes through one router, as a model's layers do: its per-tile counts must be back
/// to zero after each call, or the next call's grouping is wrong.
#[test]
fn fast_router_is_batch_invariant() {
    for dev in devices() {
        let cases = [(128, 200, 8, 64), (200, 64, 4, SEGMENT_K)];
        for (ci, &(ne, h, k, seg_k)) in cases.iter().enumerate() {
            let p = Problem::new(300, ne, h, k, 50 + ci as u64).with_segment_k(seg_k);
            let all: Vec<usize> = (0..300).collect();
            let base = route(&dev, &p, &all, true);
            let batches: Vec<Vec<usize>> = vec![
                vec![0],
                vec![299],
                vec![137],
                (100..107).collect(),
                (3..10).rev().collect(),
                (200..264).collect(),
                (13..77).collect(),
                (0..300).map(|t| (t + 17) % 300).collect(),
                (0..300).map(|t| (t * 7 + 5) % 300).collect(),
                all.clone(),
            ];
            let router = Router::with_segment_k(&dev, (300, ne, h), seg_k).unwrap();
            for rows in &batches {
                let got = route_with(&dev, &router, &p, rows, true);
                for (i, &t) in rows.iter().enumerate() {
                    let what = format!(
                        "{ne} experts: token {t} at {i} of {} vs in 300 on {}",
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
                let what = format!("{ne} experts, batch of {}", rows.len());
                check_grouping(&got.routing, &got.ids, ne, k, &what);
            }
        }
    }
}

/// More experts than the fast path takes (300, 257): the same GEMM, then `Routing::route`
/// adds the partials and routes, checked the same way; and bit for bit the logits of the
/// fast path where both see the same weights (the first 256 experts' logits do not depend on
/// the others).
/// A NaN in a token's hidden state (or in some experts' weights) makes NaN router logits;
/// the pipeline's router (tensor-core GEMM + finish kernel, fast and fallback forms) must still
/// choose `k` distinct experts below `n_expert` for every token, so the grouping stays in its
/// buffers (`moe::better` ranks NaN as −∞).
#[test]
fn nan_hidden_states_still_route_to_valid_experts() {
    for dev in devices() {
        for (ne, h, n, k) in [(128, 64, 9, 8), (300, 64, 9, 8)] {
            let mut p = Problem::new(n, ne, h, k, 90);
            p.x[2 * h + 5] = f32::NAN;
            p.x[4 * h..5 * h].fill(f32::NAN);
            for e in (0..ne).step_by(7) {
                p.w[e * h + 3] = f32::NAN;
            }
            let rows: Vec<usize> = (0..n).collect();
            let got = route(&dev, &p, &rows, true);
            let what = format!("NaN inputs, {ne} experts on {}", dev.name());
            assert_valid_distinct_ids(&got.ids, k, ne, &what);
            check_grouping(&got.routing, &got.ids, ne, k, &what);
        }
    }
}

#[test]
fn router_fallback_matches_f64() {
    for dev in devices() {
        let cases = [(300, 64, 40, 8, SEGMENT_K), (257, 136, 50, 4, 64)];
        for (ci, &(ne, h, n, k, seg_k)) in cases.iter().enumerate() {
            assert!(!Router::new(&dev, n, ne, h).unwrap().is_fast());
            let p = Problem::new(n, ne, h, k, 80 + ci as u64).with_segment_k(seg_k);
            let rows: Vec<usize> = (0..n).collect();
            let got = route(&dev, &p, &rows, true);
            let what = format!("fallback, {ne} experts, h={h} on {}", dev.name());
            check_against_f64(&p, &got, true, &what);
            let fast = Problem {
                ne: 256,
                w: p.w[..256 * h].to_vec(),
                ..p
            };
            let fast_got = route(&dev, &fast, &rows, true);
            for t in 0..n {
                assert_same(
                    &bits(&fast_got.logits[t * 256..(t + 1) * 256]),
                    &bits(&got.logits[t * ne..t * ne + 256]),
                    &format!("{what}: token {t}, fast vs fallback logits"),
                );
            }
        }
    }
}

#[test]
fn router_shapes_are_checked_before_launching() {
    let dev = Device::emulator();
    let router = Router::new(&dev, 4, 8, 32).unwrap();
    assert!(router.is_fast());
    let routing = Routing::new(&dev, 4, 8, 2).unwrap();
    let x = poisoned_tma(&dev, 4, 32);
    let w = RouterWeights::new(&dev, &poisoned(&dev, 8 * 32, 0.5f32), 8, 32).unwrap();
    let w16 = RouterWeights::new(&dev, &poisoned(&dev, 16 * 32, 0.5f32), 16, 32).unwrap();
    let launches = dev.launch_count();
    let opts = RouteOptions::default();
    let e = router.route(&dev, &x, &w, &routing, 5, opts).unwrap_err();
    assert!(e.to_string().contains("5 tokens exceed"), "{e}");
    let narrow = poisoned_tma(&dev, 4, 24);
    let e = router
        .route(&dev, &narrow, &w, &routing, 4, opts)
        .unwrap_err();
    assert!(e.to_string().contains("x is 4 × 24"), "{e}");
    let other = Routing::new(&dev, 4, 16, 2).unwrap();
    let e = router.route(&dev, &x, &w, &other, 4, opts).unwrap_err();
    assert!(e.to_string().contains("for 16 experts"), "{e}");
    let e = router.route(&dev, &x, &w16, &routing, 4, opts).unwrap_err();
    assert!(e.to_string().contains("the weights for 16"), "{e}");
    let wide = Router::with_segment_k(&dev, (4, 8, 200), 64).unwrap();
    let e = wide.route(&dev, &x, &w, &routing, 4, opts).unwrap_err();
    assert!(e.to_string().contains("made for 4 segments of 64"), "{e}");
    for seg_k in [0, 100] {
        let e = Router::with_segment_k(&dev, (4, 8, 32), seg_k)
            .err()
            .unwrap();
        assert!(e.to_string().contains("a positive multiple of 64"), "{e}");
    }
    let short = poisoned(&dev, 4 * 8 - 1, f32::NAN);
    let opts = RouteOptions {
        logits: Some(&short),
        ..opts
    };
    let e = router.route(&dev, &x, &w, &routing, 4, opts).unwrap_err();
    assert!(e.to_string().contains("logits has 31 elements"), "{e}");
    assert_eq!(
        dev.launch_count(),
        launches,
        "nothing may launch after a failed check"
    );
}

/// The finish kernel's keys rank logits as `moe::better` does (NaN as −∞, −0 equal to +0,
/// everything else by value) and above 0, the key of an expert out of the running; a key's
/// logit is the logit again (−0 as +0, NaN as −∞).
#[test]
fn logit_keys_rank_as_the_router_compares() {
    let mut values = vec![
        f32::NAN,
        f32::NEG_INFINITY,
        f32::MIN,
        -1.0,
        -f32::MIN_POSITIVE,
        -1e-45,
        -0.0,
        0.0,
        1e-45,
        f32::MIN_POSITIVE,
        1.0,
        f32::MAX,
        f32::INFINITY,
    ];
    let mut r = rng(7);
    let near: Vec<f32> = r.normal_vec(40, 3.0);
    for v in near {
        values.extend([
            v,
            f32::from_bits(v.to_bits() + 1),
            f32::from_bits(v.to_bits() - 1),
        ]);
    }
    let rank = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    for &a in &values {
        let ka = logit_key(a);
        assert!(ka > 0, "{a}: key 0 is reserved");
        assert_eq!(key_logit(ka), rank(a) + 0.0, "{a}: key's logit");
        for &b in &values {
            let (kb, ra, rb) = (logit_key(b), rank(a), rank(b));
            assert_eq!(ka > kb, ra > rb, "{a} vs {b}");
            assert_eq!(ka == kb, ra == rb, "{a} vs {b}");
        }
    }
}
