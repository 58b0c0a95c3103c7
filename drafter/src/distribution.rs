//! What the sampler does with one position's logits: pick a token (greedy or at a temperature),
//! and report the exact probability it was picked with, the model's confidence in it and the
//! top alternatives.
//!
//! Kept free of tensors so it can be checked on three- and four-element distributions.

use std::cmp::Ordering;

/// The outcome for one masked position at one denoising step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Choice {
    /// The chosen drafter id.
    pub token: u32,
    /// Probability with which `token` was drawn: 1 for greedy, `softmax(logits / T)[token]`
    /// otherwise. This is the q(x) of speculative sampling.
    pub prob: f32,
    /// The model's own probability of `token`, `softmax(logits)[token]`: what the remasking
    /// schedule ranks positions by (LLaDA's low-confidence remasking, Fast-dLLM's threshold).
    pub confidence: f32,
    /// The `top_k` most likely drafter ids with `softmax(logits)` probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// Chooses a token from `logits` (one row over the drafter vocabulary), never one of `blocked`.
/// `u` in [0, 1) is the uniform draw used when `temperature > 0`. `scratch` is reused across calls
/// to avoid allocating a vocabulary-sized buffer per position.
pub(crate) fn choose(
    logits: &[f32],
    blocked: &[u32],
    temperature: f32,
    u: f64,
    top_k: usize,
    scratch: &mut Vec<f32>,
) -> Choice {
    scratch.clear();
    scratch.extend_from_slice(logits);
    for &id in blocked {
        if let Some(l) = scratch.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    let (argmax, max) = scratch
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, l)| if l > best.1 { (i, l) } else { best });
    let z: f32 = scratch.iter().map(|&l| (l - max).exp()).sum();
    let prob_of = |id: usize| (scratch[id] - max).exp() / z;

    let (token, prob) = if temperature <= 0.0 {
        (argmax, 1.0)
    } else {
        let inv_t = 1.0 / temperature;
        let weight = |l: f32| ((l - max) * inv_t).exp();
        let z_t: f64 = scratch.iter().map(|&l| weight(l) as f64).sum();
        let target = u * z_t;
        let mut acc = 0.0f64;
        // Falls back to the argmax if rounding leaves `target` past the last weight.
        let mut token = argmax;
        for (i, &l) in scratch.iter().enumerate() {
            let w = weight(l) as f64;
            acc += w;
            if w > 0.0 && acc > target {
                token = i;
                break;
            }
        }
        (token, (weight(scratch[token]) as f64 / z_t) as f32)
    };
    let top = top_ids(scratch, top_k).into_iter().map(|i| (i as u32, prob_of(i))).collect();
    Choice { token: token as u32, prob, confidence: prob_of(token), top }
}

/// Indices of the `k` largest finite values, largest first (ties: lower index first).
fn top_ids(values: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() || (best.len() == k && v <= values[best[k - 1]]) {
            continue;
        }
        let at = best.partition_point(|&j| values[j] >= v);
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// How many positions each of `steps` steps commits when `masked` positions start masked: an even
/// share, the remainder going to the first steps (LLaDA's schedule for low-confidence remasking).
pub(crate) fn even_share(masked: usize, steps: usize) -> Vec<usize> {
    let steps = steps.max(1);
    (0..steps).map(|s| masked / steps + usize::from(s < masked % steps)).collect()
}

/// Orders candidate positions by confidence, highest first; ties go to the earlier position, so
/// the result does not depend on anything but the numbers.
pub(crate) fn by_confidence(candidates: &mut [(usize, Choice)]) {
    candidates.sort_by(|a, b| b.1.confidence.partial_cmp(&a.1.confidence).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn greedy_picks_the_argmax_with_probability_one() {
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let c = choose(&logits, &[], 0.0, 0.5, 2, &mut Vec::new());
        assert_eq!(c.token, 1);
        assert_eq!(c.prob, 1.0);
        let z: f32 = logits.iter().map(|l| (l - 2.0).exp()).sum();
        assert!(close(c.confidence, 1.0 / z));
        assert_eq!(c.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn temperature_sampling_reports_the_exact_sampling_probability() {
        // At T = 0.5 the weights are exp(2 * l): ln 1, ln 2, ln 3 give 1, 4, 9 out of 14.
        let logits = [0.0f32, 2f32.ln(), 3f32.ln()];
        let draws = [(0.0, 0, 1.0 / 14.0), (0.2, 1, 4.0 / 14.0), (0.5, 2, 9.0 / 14.0), (0.999, 2, 9.0 / 14.0)];
        for (u, token, prob) in draws {
            let c = choose(&logits, &[], 0.5, u, 0, &mut Vec::new());
            assert_eq!(c.token, token, "u = {u}");
            assert!(close(c.prob, prob), "u = {u}: {} vs {prob}", c.prob);
            assert!(close(c.confidence, [1.0, 2.0, 3.0][token as usize] / 6.0));
        }
    }

    #[test]
    fn blocked_ids_are_never_chosen() {
        let logits = [5.0f32, 1.0, 0.0, 0.5];
        for u in [0.0, 0.3, 0.9] {
            let c = choose(&logits, &[0], 1.0, u, 4, &mut Vec::new());
            assert_ne!(c.token, 0);
            assert!(c.top.iter().all(|t| t.0 != 0));
        }
        assert_eq!(choose(&logits, &[0], 0.0, 0.0, 0, &mut Vec::new()).token, 1);
    }

    #[test]
    fn even_share_spreads_the_remainder_over_the_first_steps() {
        assert_eq!(even_share(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(even_share(4, 4), vec![1, 1, 1, 1]);
        assert_eq!(even_share(16, 1), vec![16]);
    }

    #[test]
    fn top_ids_keeps_the_largest_in_order() {
        assert_eq!(top_ids(&[0.1, 0.5, f32::NEG_INFINITY, 0.5, 0.3], 3), vec![1, 3, 4]);
        assert!(top_ids(&[1.0], 0).is_empty());
    }
}
