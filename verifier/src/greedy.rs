//! Greedy choice and the greedy acceptance rule, kept free of llama.cpp so they can be tested on
//! hand-made logits.

use crate::TokenId;

/// The verifier's greedy choice at one position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The arg-max token (the lowest id among equal maxima, so the choice is deterministic).
    pub token: TokenId,
    /// Its softmax probability.
    pub prob: f32,
    /// Logit of the best token minus logit of the runner-up: how close the choice was to a tie.
    pub margin: f32,
}

/// The arg-max of `logits`, its probability and its margin over the runner-up.
///
/// It runs once for every row a verification returns (151,936 logits each for the shipped models),
/// on the verifier's thread while llama.cpp's other threads wait, so it is written in lanes the
/// compiler turns into SIMD: maxima are exact in any order, and the softmax denominator sums
/// [`exp_nonpositive`] in 16 f64 lanes, always in the same order for the same logits.
///
/// # Panics
/// On empty logits (a llama.cpp logits row always holds the whole vocabulary).
pub fn choose(logits: &[f32]) -> Choice {
    assert!(!logits.is_empty(), "a logits row is never empty");
    let best_v = max(logits);
    // The lowest id among equal maxima; NaN logits (never produced) are never chosen.
    let best = logits.iter().position(|&v| v == best_v).unwrap_or(0);
    let second_v = max(&logits[..best]).max(max(&logits[best + 1..]));
    let mut lanes = [0f64; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(exp_nonpositive(v - best_v));
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(tail) {
        *lane += f64::from(exp_nonpositive(v - best_v));
    }
    let denom: f64 = lanes.iter().sum();
    Choice { token: best as TokenId, prob: (1.0 / denom) as f32, margin: best_v - second_v }
}

const LANES: usize = 16;

/// The largest value (−∞ for none), in lanes.
fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(tail) {
        *lane = if v > *lane { v } else { *lane };
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
}

/// `e^x` for `x ≤ 0` to a few ulp, branch-free so that it vectorises (libm's `exp` is a call per
/// value): `e^x = 2^n · e^f` with `n` the nearest integer to `x·log2 e`, `f = x − n·ln 2` (ln 2 in
/// two parts, so `f` keeps its bits) and a degree-7 polynomial for `e^f`, `|f| ≤ ln2/2`. Values at or
/// below −87 (where `e^x` leaves f32's normal range) give 0.
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let f = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // Taylor series of e^f: the first omitted term is below 2e-9 relative.
    let mut p: f32 = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(f, c);
    }
    // 2^n for n in −126..=0, from its exponent bits.
    let scale = f32::from_bits((((n as i32) + 127).max(0) as u32) << 23);
    if x > -87.0 { p * scale } else { 0.0 }
}

/// Number of draft tokens to accept: the longest prefix of `draft` where each token equals the
/// verifier's greedy choice at the position before it. `choices[i]` is the choice after the pending
/// token and the first `i` draft tokens, so `choices` has `draft.len() + 1` entries and
/// `choices[accepted]` is the verifier's own next token.
pub fn accept_prefix(draft: &[TokenId], choices: &[Choice]) -> usize {
    debug_assert_eq!(choices.len(), draft.len() + 1);
    draft.iter().zip(choices).take_while(|(d, c)| **d == c.token).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(token: TokenId) -> Choice {
        Choice { token, prob: 1.0, margin: 1.0 }
    }

    #[test]
    fn choose_takes_the_lowest_id_among_equal_maxima() {
        let ch = choose(&[0.5, 2.0, 2.0, -1.0]);
        assert_eq!(ch.token, 1);
        assert_eq!(ch.margin, 0.0);
    }

    #[test]
    fn choose_reports_probability_and_margin() {
        let ch = choose(&[0.0, (3.0f32).ln(), f32::NEG_INFINITY]);
        assert_eq!(ch.token, 1);
        assert!((ch.prob - 0.75).abs() < 1e-6);
        assert!((ch.margin - (3.0f32).ln()).abs() < 1e-6);
    }

    #[test]
    fn choose_gives_margin_zero_at_a_tie_and_the_softmax_probability_of_its_choice() {
        let mut logits: Vec<f32> = (0..1000).map(|i| -((i % 97) as f32) / 10.0).collect();
        logits[995] = 3.0;
        logits[998] = 3.0;
        let ch = choose(&logits);
        assert_eq!((ch.token, ch.margin), (995, 0.0));
        let exact: f64 = logits.iter().map(|&v| f64::from(v - 3.0).exp()).sum();
        assert!(((1.0 / exact) as f32 - ch.prob).abs() < 1e-6, "{} vs {}", 1.0 / exact, ch.prob);
    }

    #[test]
    fn exp_nonpositive_is_within_a_few_ulp_of_libm_down_to_underflow() {
        for i in 0..100_000 {
            let x = -(i as f32) * 0.00087;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 3.0 * f32::EPSILON * want, "e^{x}: {got} vs {want}");
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn accept_prefix_stops_at_the_first_mismatch() {
        assert_eq!(accept_prefix(&[5, 6, 7], &[c(5), c(6), c(9), c(1)]), 2);
    }

    #[test]
    fn accept_prefix_accepts_a_whole_matching_block() {
        assert_eq!(accept_prefix(&[5, 6], &[c(5), c(6), c(8)]), 2);
    }

    #[test]
    fn accept_prefix_rejects_a_wrong_first_token() {
        assert_eq!(accept_prefix(&[4, 6], &[c(5), c(6), c(8)]), 0);
    }

    #[test]
    fn accept_prefix_of_an_empty_draft_is_zero() {
        assert_eq!(accept_prefix(&[], &[c(5)]), 0);
    }
}
