//! Sampling settings and the processed distribution they define over one logits row, kept free of
//! llama.cpp so they can be checked on three- and four-element rows.
//!
//! The processed distribution p follows Hugging Face's order: divide the logits by the temperature,
//! keep the `top_k` largest, softmax, then keep the smallest set of most likely tokens whose mass
//! reaches `top_p` (the nucleus), renormalised. Temperature 0 is greedy decoding and never reaches
//! this module: the verifier keeps its arg-max path bit for bit.
//!
//! Randomness is counter-based: the uniform for a decision is a hash of (seed, token position,
//! purpose), not the next value of a stream. The same seed therefore gives the same tokens however
//! many draws earlier rounds consumed, and a drafter seeded differently draws independently of the
//! verifier, which speculative sampling needs.

use std::cmp::Ordering;

use crate::TokenId;

/// Largest accepted temperature: beyond it every distribution is nearly uniform anyway.
pub const MAX_TEMPERATURE: f32 = 100.0;

/// How a generation picks its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 for greedy decoding (the arg-max, lowest id among ties); otherwise logits are divided by
    /// it before the softmax. 0 to [`MAX_TEMPERATURE`].
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in (0, 1];
    /// 1 keeps all.
    pub top_p: f32,
    /// Seed of every draw: the same seed, model, prompt and settings give the same output.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy decoding.
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Whether this is greedy decoding (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field against its limit; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&self.temperature)) {
            return Err(format!("`temperature` must be between 0 and {MAX_TEMPERATURE}, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("`top_p` must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }

    /// The same settings with another seed, derived from this one and `salt`: a drafter sampling
    /// alongside the verifier must not reuse the verifier's uniforms.
    pub fn with_derived_seed(&self, salt: u64) -> Self {
        Self { seed: mix(self.seed ^ mix(salt.wrapping_add(0x5851_f42d_4c95_7f2d))), ..*self }
    }
}

/// A distribution over token ids as (token, probability) pairs that sum to 1 (within rounding).
/// Tokens not listed have probability 0. A drafter's deterministic token is `[(x, 1.0)]`.
pub type SparseDist = Vec<(TokenId, f32)>;

/// What a uniform draw decides; part of the counter that picks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Sampling a token from p (plain decoding, the first token, the bonus token).
    Sample = 1,
    /// Accepting or rejecting a draft token.
    Accept = 2,
    /// Sampling from the residual max(0, p − q) after a rejection.
    Resample = 3,
}

/// The uniform in [0, 1) for the decision `purpose` at token `position` under `seed`.
pub fn uniform(seed: u64, position: usize, purpose: Purpose) -> f64 {
    let h = mix(mix(seed ^ mix(position as u64)).wrapping_add(purpose as u64));
    // 53 random bits: every value is exact in an f64 and below 1.
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The processed distribution of one logits row under `params` (temperature > 0), listed in
/// decreasing probability (ties: lower id first) when `top_k` or `top_p` truncates it, in id order
/// otherwise. Non-finite logits (masked tokens) get probability 0 and are left out.
///
/// Runs once per verified position over a 151,936-wide row, so it avoids sorting the vocabulary:
/// top-k keeps a small sorted buffer in one pass and exponentiates only the k survivors.
pub fn process(logits: &[f32], params: &SamplingParams) -> SparseDist {
    debug_assert!(params.temperature > 0.0);
    let inv_t = 1.0 / params.temperature;
    let top_p = f64::from(params.top_p);
    if params.top_k > 0 {
        let ids = top_ids(logits, params.top_k);
        let Some(&best) = ids.first() else { return Vec::new() };
        let max = logits[best as usize];
        let weights: Vec<f64> = ids.iter().map(|&i| f64::from((logits[i as usize] - max) * inv_t).exp()).collect();
        let z: f64 = weights.iter().sum();
        let mut mass = 0.0;
        let mut dist: Vec<(TokenId, f64)> = Vec::with_capacity(ids.len());
        for (&i, &w) in ids.iter().zip(&weights) {
            dist.push((i, w / z));
            mass += w / z;
            if mass >= top_p {
                break;
            }
        }
        return normalise(dist);
    }
    let Some(max) = logits.iter().copied().filter(|l| l.is_finite()).reduce(f32::max) else {
        return Vec::new();
    };
    let mut z = 0.0f64;
    let mut dist: Vec<(TokenId, f64)> = Vec::with_capacity(logits.len());
    for (i, &l) in logits.iter().enumerate() {
        if l.is_finite() {
            let w = ((l - max) * inv_t).exp();
            z += f64::from(w);
            dist.push((i as TokenId, f64::from(w)));
        }
    }
    for e in &mut dist {
        e.1 /= z;
    }
    if top_p < 1.0 {
        dist = nucleus(dist, top_p);
    }
    normalise(dist)
}

/// Renormalises after truncation and narrows to f32.
fn normalise(dist: Vec<(TokenId, f64)>) -> SparseDist {
    let z: f64 = dist.iter().map(|e| e.1).sum();
    dist.into_iter().map(|(t, p)| (t, (p / z) as f32)).collect()
}

/// Ids of the `k` largest finite logits, largest first (ties: lower id first).
fn top_ids(logits: &[f32], k: usize) -> Vec<TokenId> {
    let better = |a: u32, b: u32| {
        let (la, lb) = (logits[a as usize], logits[b as usize]);
        la > lb || (la == lb && a < b)
    };
    if k > 256 {
        // A large k: selecting is cheaper than keeping a long sorted buffer.
        let mut ids: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
        let order = |a: &u32, b: &u32| if better(*a, *b) { Ordering::Less } else if better(*b, *a) { Ordering::Greater } else { Ordering::Equal };
        if k < ids.len() {
            ids.select_nth_unstable_by(k - 1, order);
            ids.truncate(k);
        }
        ids.sort_unstable_by(order);
        return ids;
    }
    let mut best: Vec<u32> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        // Scanning in id order, a later id never beats an equal logit already kept.
        if !l.is_finite() || (best.len() == k && l <= logits[best[k - 1] as usize]) {
            continue;
        }
        let at = best.partition_point(|&j| logits[j as usize] >= l);
        best.insert(at, i as u32);
        best.truncate(k);
    }
    best
}

/// The smallest prefix of `dist` sorted by decreasing probability whose mass reaches `top_p`
/// (at least one token). Sorting the whole vocabulary per position would cost more than the
/// decode, so only the tokens above a threshold are sorted: if the tokens with p ≥ t already hold
/// `top_p` of the mass, the nucleus lies among them.
fn nucleus(dist: Vec<(TokenId, f64)>, top_p: f64) -> Vec<(TokenId, f64)> {
    let mut threshold = 1e-2;
    let mut head = loop {
        let head: Vec<(TokenId, f64)> = dist.iter().copied().filter(|e| e.1 >= threshold).collect();
        if head.iter().map(|e| e.1).sum::<f64>() >= top_p || threshold < 1e-12 {
            break if threshold < 1e-12 { dist } else { head };
        }
        threshold *= 1e-2;
    };
    head.sort_unstable_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0)));
    let mut mass = 0.0;
    let keep = head
        .iter()
        .position(|e| {
            mass += e.1;
            mass >= top_p
        })
        .map_or(head.len(), |i| i + 1);
    head.truncate(keep.max(1));
    head
}

/// Probability of `token` under `dist` (0 when it is not listed).
pub fn prob_of(dist: &[(TokenId, f32)], token: TokenId) -> f32 {
    dist.iter().find(|e| e.0 == token).map_or(0.0, |e| e.1)
}

/// Draws from `dist` with the uniform `u` in [0, 1) by inverse CDF in list order; `None` only for an
/// empty (or all-zero) distribution.
pub fn draw(dist: &[(TokenId, f32)], u: f64) -> Option<TokenId> {
    draw_weighted(dist.iter().map(|e| (e.0, f64::from(e.1))), u)
}

/// Inverse-CDF draw from non-negative weights that need not sum to 1.
pub(crate) fn draw_weighted(weights: impl Iterator<Item = (TokenId, f64)> + Clone, u: f64) -> Option<TokenId> {
    let total: f64 = weights.clone().map(|e| e.1.max(0.0)).sum();
    if total <= 0.0 {
        return None;
    }
    let target = u * total;
    let mut acc = 0.0;
    let mut last = None;
    for (t, w) in weights {
        if w <= 0.0 {
            continue;
        }
        acc += w;
        last = Some(t);
        if acc > target {
            return Some(t);
        }
    }
    // Rounding left the target at the very end: the last token with weight takes it.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed: 0 }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn temperature_one_is_the_softmax_in_id_order() {
        let d = process(&[0.0, 2f32.ln(), 3f32.ln()], &params(1.0, 0, 1.0));
        assert_eq!(d.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        for (e, want) in d.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!(close(e.1, want), "{d:?}");
        }
    }

    #[test]
    fn temperature_sharpens_before_the_softmax() {
        // At T = 0.5 the weights are squared: 1, 4, 9 out of 14.
        let d = process(&[0.0, 2f32.ln(), 3f32.ln()], &params(0.5, 0, 1.0));
        assert!(close(d[2].1, 9.0 / 14.0), "{d:?}");
    }

    #[test]
    fn top_k_keeps_the_k_largest_renormalised_best_first() {
        let d = process(&[1f32.ln(), 4f32.ln(), 2f32.ln(), 3f32.ln()], &params(1.0, 2, 1.0));
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].0, d[1].0), (1, 3));
        assert!(close(d[0].1, 4.0 / 7.0) && close(d[1].1, 3.0 / 7.0), "{d:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // Probabilities 0.1 0.4 0.2 0.3: 0.4 + 0.3 = 0.7 reaches 0.65, so two tokens stay.
        let logits = [0.1f32.ln(), 0.4f32.ln(), 0.2f32.ln(), 0.3f32.ln()];
        let d = process(&logits, &params(1.0, 0, 0.65));
        assert_eq!(d.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!(close(d[0].1, 4.0 / 7.0), "{d:?}");
        // A tiny top_p still keeps the best token.
        assert_eq!(process(&logits, &params(1.0, 0, 1e-6)), vec![(1, 1.0)]);
    }

    #[test]
    fn top_p_finds_the_nucleus_in_a_flat_distribution() {
        // 1,000 equal tokens: every one is below the first threshold, the search must widen.
        let d = process(&vec![0.0f32; 1000], &params(1.0, 0, 0.5));
        assert_eq!(d.len(), 500);
        assert_eq!(d[0].0, 0, "ties go to the lower id");
    }

    #[test]
    fn masked_logits_get_no_probability() {
        let d = process(&[0.0, f32::NEG_INFINITY, 0.0], &params(1.0, 0, 1.0));
        assert_eq!(d.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn draw_follows_the_cumulative_distribution() {
        let d = vec![(7, 0.25), (3, 0.5), (9, 0.25)];
        assert_eq!(draw(&d, 0.0), Some(7));
        assert_eq!(draw(&d, 0.3), Some(3));
        assert_eq!(draw(&d, 0.8), Some(9));
        assert_eq!(draw(&d, 0.999_999_999), Some(9));
        assert_eq!(draw(&[], 0.5), None);
        assert_eq!(draw(&[(1, 0.0), (2, 1.0), (3, 0.0)], 0.999_999), Some(2));
    }

    #[test]
    fn uniforms_are_reproducible_and_differ_by_seed_position_and_purpose() {
        let u = uniform(42, 10, Purpose::Sample);
        assert_eq!(u, uniform(42, 10, Purpose::Sample));
        assert!((0.0..1.0).contains(&u));
        assert_ne!(u, uniform(43, 10, Purpose::Sample));
        assert_ne!(u, uniform(42, 11, Purpose::Sample));
        assert_ne!(u, uniform(42, 10, Purpose::Accept));
        // Roughly uniform: the mean of many draws is near 1/2.
        let mean = (0..10_000).map(|i| uniform(7, i, Purpose::Accept)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn bad_settings_name_the_field() {
        assert!(params(-1.0, 0, 1.0).validate().expect_err("invalid").contains("`temperature`"));
        assert!(params(f32::NAN, 0, 1.0).validate().expect_err("invalid").contains("`temperature`"));
        assert!(params(1.0, 0, 0.0).validate().expect_err("invalid").contains("`top_p`"));
        assert!(params(1.0, 0, 1.5).validate().expect_err("invalid").contains("`top_p`"));
        assert!(params(0.7, 40, 0.9).validate().is_ok());
    }

    #[test]
    fn a_derived_seed_differs_from_the_original() {
        let p = SamplingParams { seed: 5, ..params(1.0, 0, 1.0) };
        assert_ne!(p.with_derived_seed(1).seed, p.seed);
        assert_ne!(p.with_derived_seed(1).seed, p.with_derived_seed(2).seed);
        assert_eq!(p.with_derived_seed(1), p.with_derived_seed(1));
    }
}
