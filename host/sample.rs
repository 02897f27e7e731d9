//! Choosing the next token from a row of logits: greedy (the default), or seeded sampling.
//!
//! Sampling applies, in this order: **temperature** (logits divided by T) → **top-k** (the k
//! most likely tokens) → **top-p** (the smallest prefix of those, most likely first, whose
//! probability reaches p) → **sample** (one uniform draw from [`Rng`] over what is left,
//! renormalised). Candidates are ordered by logit, highest first, and by id on a tie, and the
//! probabilities are computed in f64 from that order, so a seed gives the same tokens on every
//! run and machine for the same logits. Greedy takes the highest logit, the lowest id on a tie;
//! NaN logits are never chosen (unless every logit is NaN: then token 0).

use crate::rng::Rng;

/// How to pick tokens. `temperature == 0` (the default) is greedy and ignores the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingOptions {
    /// Divides the logits before the softmax; 0 means greedy.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (`None`: 1).
    pub top_p: Option<f64>,
    /// The RNG's seed.
    pub seed: u64,
}

impl SamplingOptions {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the ranges: temperature finite and ≥ 0, k ≥ 1, 0 < p ≤ 1.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature {} must be a finite number ≥ 0 (0: greedy)",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return Err("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("top-p {p} must be in (0, 1]"));
        }
        Ok(())
    }
}

/// Picks tokens one row of logits at a time; its RNG advances one draw per sampled token.
#[derive(Clone, Debug)]
pub struct Sampler {
    opts: SamplingOptions,
    rng: Rng,
}

/// The highest logit's id, the lowest id on a tie; NaNs are skipped (0 if all are NaN).
pub fn greedy(logits: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|b| v > logits[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Self {
        let rng = Rng::new(opts.seed);
        Sampler { opts, rng }
    }

    pub fn options(&self) -> &SamplingOptions {
        &self.opts
    }

    /// The next token for `logits` (one row of `vocab` values).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.opts.is_greedy() || logits.is_empty() {
            return greedy(logits);
        }
        // Candidates, most likely first (ties: lower id first); NaNs dropped.
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        if order.is_empty() {
            return 0;
        }
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        // Temperature, then top-k.
        if let Some(k) = self.opts.top_k {
            order.truncate(k.max(1));
        }
        let t = self.opts.temperature;
        let top = f64::from(logits[order[0]]) / t;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| (f64::from(logits[i]) / t - top).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        // Top-p: the shortest prefix reaching p (at least one token).
        if let Some(p) = self.opts.top_p {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        // One draw over what is left, renormalised.
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.uniform() * total;
        for (i, q) in probs.iter().enumerate() {
            if u < *q {
                return order[i] as u32;
            }
            u -= q;
        }
        order[probs.len() - 1] as u32
    }
}
