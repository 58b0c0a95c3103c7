//! What the sampler does with one position's logits: pick a token (greedy or at a temperature),
//! and report the exact probability it was picked with, the model's confidence in it and the
//! top alternatives.
//!
//! Kept free of tensors so it can be checked on three- and four-element distributions.

use std::cmp::Ordering;

use crate::kernels::{fast_exp, max_of, sum_of};

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

/// Buffers `choose` reuses across positions, so no vocabulary-sized allocation happens per call.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    logits: Vec<f32>,
    exps: Vec<f32>,
    weights: Vec<f32>,
}

/// Chooses a token from `logits` (one row over the drafter vocabulary), never one of `blocked`.
/// `u` in [0, 1) is the uniform draw used when `temperature > 0`.
pub(crate) fn choose(
    logits: &[f32],
    blocked: &[u32],
    temperature: f32,
    u: f64,
    top_k: usize,
    scratch: &mut Scratch,
) -> Choice {
    let Scratch { logits: masked, exps, weights } = scratch;
    masked.clear();
    masked.extend_from_slice(logits);
    for &id in blocked {
        if let Some(l) = masked.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    let max = max_of(masked);
    // Invariant: the vocabulary always has a draftable id, so the maximum is finite and found.
    let argmax = masked.iter().position(|&l| l == max).unwrap_or(0);
    let z = exp_into(masked, max, 1.0, exps);

    let (token, prob) = if temperature <= 0.0 {
        (argmax, 1.0)
    } else {
        let (w, z_t) = if temperature == 1.0 {
            (&*exps, z)
        } else {
            let z_t = exp_into(masked, max, 1.0 / temperature, weights);
            (&*weights, z_t)
        };
        let token = inverse_cdf(w, (u * z_t as f64) as f32).unwrap_or(argmax);
        (token, w[token] / z_t)
    };
    let top = top_ids(masked, top_k).into_iter().map(|i| (i as u32, exps[i] / z)).collect();
    Choice { token: token as u32, prob, confidence: exps[token] / z, top }
}

/// The first index where the running sum of `weights` passes `target`, skipping whole chunks at a
/// time; `None` if rounding leaves `target` beyond the total.
fn inverse_cdf(weights: &[f32], target: f32) -> Option<usize> {
    const CHUNK: usize = 256;
    let mut acc = 0f32;
    for (c, chunk) in weights.chunks(CHUNK).enumerate() {
        let sum = sum_of(chunk);
        if acc + sum > target {
            for (i, &w) in chunk.iter().enumerate() {
                acc += w;
                if w > 0.0 && acc > target {
                    return Some(c * CHUNK + i);
                }
            }
            // Rounding: the chunk's sum passed the target but its running sum did not.
            return chunk.iter().rposition(|&w| w > 0.0).map(|i| c * CHUNK + i);
        }
        acc += sum;
    }
    weights.iter().rposition(|&w| w > 0.0)
}

/// Fills `out` with `exp((l - max) * scale)` for every logit and returns their sum.
fn exp_into(logits: &[f32], max: f32, scale: f32, out: &mut Vec<f32>) -> f32 {
    out.clear();
    out.extend(logits.iter().map(|&l| fast_exp((l - max) * scale)));
    sum_of(out)
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
        let c = choose(&logits, &[], 0.0, 0.5, 2, &mut Scratch::default());
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
            let c = choose(&logits, &[], 0.5, u, 0, &mut Scratch::default());
            assert_eq!(c.token, token, "u = {u}");
            assert!(close(c.prob, prob), "u = {u}: {} vs {prob}", c.prob);
            assert!(close(c.confidence, [1.0, 2.0, 3.0][token as usize] / 6.0));
        }
    }

    #[test]
    fn blocked_ids_are_never_chosen() {
        let logits = [5.0f32, 1.0, 0.0, 0.5];
        for u in [0.0, 0.3, 0.9] {
            let c = choose(&logits, &[0], 1.0, u, 4, &mut Scratch::default());
            assert_ne!(c.token, 0);
            assert!(c.top.iter().all(|t| t.0 != 0));
        }
        assert_eq!(choose(&logits, &[0], 0.0, 0.0, 0, &mut Scratch::default()).token, 1);
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
