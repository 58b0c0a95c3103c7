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
/// # Panics
/// On empty logits (a llama.cpp logits row always holds the whole vocabulary).
pub fn choose(logits: &[f32]) -> Choice {
    assert!(!logits.is_empty(), "a logits row is never empty");
    let (mut best, mut best_v, mut second_v) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            second_v = best_v;
            best = i;
            best_v = v;
        } else if v > second_v {
            second_v = v;
        }
    }
    let denom: f64 = logits.iter().map(|&v| f64::from(v - best_v).exp()).sum();
    Choice { token: best as TokenId, prob: (1.0 / denom) as f32, margin: best_v - second_v }
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
