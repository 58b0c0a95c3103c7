//! N-gram prompt lookup: propose the continuation of an earlier occurrence of the context's last
//! n tokens, trying the longest n first. Costs microseconds and wins where the output copies the
//! input (edits, refactors, quoting); proposes nothing when there is no match, so the engine takes a
//! plain step instead of paying for a block that will be rejected.
//!
//! Of the occurrences, the one whose preceding tokens agree with the context's furthest back (its
//! *extent*) is copied, the latest among equals: an output that copies a passage of the prompt
//! agrees with it over many tokens, while a common phrase agrees over a few. The extent is also the
//! evidence behind each draft's confidence. A copy that has gone on for e tokens goes on for one more
//! with a chance of about 1 − 1/e (on the three bench suites, first drafts after matches of extent
//! 2, 3, 4, 5–6, 7–8, 9–12, 13–16 were accepted 0.47, 0.64, 0.72, 0.84, 0.88, 0.93, 0.94 of the time,
//! against 0.50, 0.67, 0.75, 0.80–0.83, 0.86–0.88, 0.89–0.92, 0.92–0.94 by the rule), and the i-th
//! draft, once the drafts before it were accepted, continues a copy of extent e + i. Several
//! occurrences of equal extent with different continuations split it: the text has gone more than
//! one way after those tokens (first drafts after two such occurrences: 0.36).
//! On a CPU where a first draft costs a whole extra step, only long copies pay, and these
//! confidences let the cost-aware policy send them and nothing else.

use duet_verifier::TokenId;

use crate::engine::{Draft, DraftError, DraftRequest, Drafter};

/// Longest n-gram tried.
pub const DEFAULT_MAX_NGRAM: usize = 4;
/// Shortest n-gram that counts as a match: single tokens match almost anywhere and mostly mislead.
pub const DEFAULT_MIN_NGRAM: usize = 2;
/// Longest extent measured: beyond it a copy counts as certain as the policy allows, and the
/// backward comparison stays cheap in long contexts.
pub const MAX_EXTENT: usize = 64;

/// The prompt-lookup drafter.
#[derive(Debug, Clone)]
pub struct NgramDrafter {
    max_ngram: usize,
    min_ngram: usize,
}

impl Default for NgramDrafter {
    fn default() -> Self {
        Self { max_ngram: DEFAULT_MAX_NGRAM, min_ngram: DEFAULT_MIN_NGRAM }
    }
}

impl NgramDrafter {
    /// A drafter matching n-grams of `min_ngram..=max_ngram` tokens.
    pub fn new(min_ngram: usize, max_ngram: usize) -> Self {
        Self { min_ngram: min_ngram.max(1), max_ngram: max_ngram.max(min_ngram.max(1)) }
    }
}

/// An earlier occurrence of the context's last tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Where its continuation starts in the context.
    pub from: usize,
    /// How many tokens before `from` agree with the context's last tokens (at most [`MAX_EXTENT`]).
    pub extent: usize,
    /// Occurrences of that extent whose next tokens differ from this one's: 1 when the text has
    /// gone only one way after them.
    pub ways: usize,
}

impl Match {
    /// The chance that draft `i` (0-based) of the copy is accepted once the drafts before it were.
    pub fn confidence(&self, i: usize) -> f32 {
        let extent = (self.extent + i) as f32;
        (1.0 - 1.0 / extent.max(1.0)) / self.ways.max(1) as f32
    }
}

/// The best earlier occurrence of the longest suffix of `context` of `min_n..=max_n` tokens that
/// has something after it: the one of greatest extent, the latest among equals.
pub fn find_match(context: &[TokenId], min_n: usize, max_n: usize) -> Option<Match> {
    let len = context.len();
    for n in (min_n.max(1)..=max_n.min(len.saturating_sub(1))).rev() {
        let suffix = &context[len - n..];
        let mut best: Option<Match> = None;
        let mut next_tokens: Vec<TokenId> = Vec::new();
        // Latest first, ending before the suffix itself.
        for start in (0..len - n).rev().filter(|&s| &context[s..s + n] == suffix) {
            let from = start + n;
            let extent = n + (0..MAX_EXTENT.saturating_sub(n).min(start))
                .take_while(|&j| context[start - 1 - j] == context[len - n - 1 - j])
                .count();
            match best {
                Some(b) if extent < b.extent => {}
                Some(b) if extent == b.extent => {
                    if !next_tokens.contains(&context[from]) {
                        next_tokens.push(context[from]);
                    }
                }
                _ => {
                    best = Some(Match { from, extent, ways: 1 });
                    next_tokens = vec![context[from]];
                }
            }
        }
        if let Some(b) = best {
            return Some(Match { ways: next_tokens.len(), ..b });
        }
    }
    None
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &str {
        "ngram"
    }

    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let Some(m) = find_match(req.context, self.min_ngram, self.max_ngram) else {
            return Ok(Draft::default());
        };
        let tokens = req.context[m.from..(m.from + req.max_len).min(req.context.len())].to_vec();
        // Deterministic: each token is drafted with probability one.
        let probs = vec![1.0; tokens.len()];
        let confidences = (0..tokens.len()).map(|i| m.confidence(i)).collect();
        Ok(Draft { tokens, probs, confidences, ..Draft::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(ctx: &[TokenId], max_len: usize) -> Draft {
        let req = DraftRequest { context: ctx, previous: None, max_len, features: None };
        NgramDrafter::default().propose(&req).expect("n-gram drafts never fail")
    }

    #[test]
    fn proposes_the_continuation_of_the_latest_of_equal_matches() {
        // "1 2 3 9 | 1 2 3 7 | 1 2": both "1 2" follow a different token; the latest continues "3 7 1".
        let ctx = [1, 2, 3, 9, 4, 1, 2, 3, 7, 5, 1, 2];
        assert_eq!(propose(&ctx, 3).tokens, [3, 7, 5]);
    }

    #[test]
    fn prefers_the_longest_ngram() {
        // "5 1 2" occurs once (followed by 8); the bigram "1 2" occurs later, followed by 6.
        let ctx = [5, 1, 2, 8, 1, 2, 6, 5, 1, 2];
        assert_eq!(propose(&ctx, 2).tokens, [8, 1]);
    }

    #[test]
    fn copies_the_occurrence_that_agrees_furthest_back() {
        // "7 8 1 2" agrees with the end over four tokens, the later "1 2" over two.
        let ctx = [7, 8, 1, 2, 3, 4, 9, 1, 2, 5, 6, 7, 8, 1, 2];
        let m = find_match(&ctx, 2, 2).expect("match");
        assert_eq!((m.from, m.extent, m.ways), (4, 4, 1));
        assert_eq!(propose(&ctx[..], 2).tokens, [3, 4]);
    }

    #[test]
    fn a_long_copy_is_trusted_more_than_a_common_phrase() {
        let copy = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 0, 10, 11, 12, 13, 14, 15, 16, 17];
        let phrase = [10, 11, 12, 13, 14, 0, 20, 12, 13];
        let (long, short) = (propose(&copy, 2), propose(&phrase, 2));
        assert_eq!(long.tokens, [18, 19]);
        assert_eq!(short.tokens, [14, 0]);
        assert!((short.confidences[0] - 0.5).abs() < 1e-6, "a bigram's copy: {:?}", short.confidences);
        assert!(long.confidences[0] > 0.85, "{:?}", long.confidences);
        // Each accepted draft lengthens the copy.
        assert!(long.confidences[1] > long.confidences[0] && short.confidences[1] > short.confidences[0]);
    }

    #[test]
    fn where_a_first_draft_costs_a_whole_step_only_long_copies_are_sent() {
        use crate::engine::policy::{CostCurve, best_length};
        // AMD EPYC, 2 threads: c(1) = 2, c(3) = 2.9, c(8) = 5.9.
        let steep = CostCurve::from_times(&[0, 1, 2, 3, 4, 8], &[1.0, 2.0, 2.42, 2.88, 3.52, 5.89]).expect("curve");
        let rates = |extent: usize| -> Vec<f64> {
            let m = Match { from: 0, extent, ways: 1 };
            (0..8).map(|i| f64::from(m.confidence(i))).collect()
        };
        assert_eq!(best_length(&rates(3), &steep, 0.0), 0, "a common phrase");
        assert_eq!(best_length(&rates(4), &steep, 0.0), 0);
        assert!(best_length(&rates(10), &steep, 0.0) >= 3, "a copied passage");
        // FACTS.md's curve (Intel Xeon): c(2) = 1.6; even a short match pays there.
        let flat = CostCurve::from_times(&[0, 2, 4, 8], &[1.0, 1.6, 2.6, 4.4]).expect("curve");
        assert!(best_length(&rates(3), &flat, 0.0) >= 1);
    }

    #[test]
    fn matches_that_went_different_ways_split_the_confidence() {
        // "1 2" was followed by 3 once and by 4 once, each after a different token.
        let ctx = [8, 1, 2, 3, 9, 1, 2, 4, 0, 1, 2];
        let m = find_match(&ctx, 2, 2).expect("match");
        assert_eq!((m.extent, m.ways), (2, 2));
        assert!((propose(&ctx, 1).confidences[0] - 0.25).abs() < 1e-6);
        // The same continuation twice is no ambiguity.
        let same = [8, 1, 2, 3, 9, 1, 2, 3, 0, 1, 2];
        assert_eq!(find_match(&same, 2, 2).map(|m| m.ways), Some(1));
    }

    #[test]
    fn proposes_nothing_without_a_match() {
        assert!(propose(&[1, 2, 3, 4], 8).tokens.is_empty());
        assert!(propose(&[1, 2, 3, 4], 8).confidences.is_empty());
    }

    #[test]
    fn respects_max_len() {
        let ctx = [1, 2, 3, 4, 5, 1, 2];
        assert_eq!(propose(&ctx, 2).tokens, [3, 4]);
        assert_eq!(propose(&ctx, 2).confidences.len(), 2);
    }

    #[test]
    fn handles_tiny_contexts() {
        assert!(find_match(&[], 2, 4).is_none());
        assert!(find_match(&[1], 1, 4).is_none());
        let m = find_match(&[1, 1], 1, 4).expect("match");
        assert_eq!((m.from, m.extent), (1, 1));
        assert_eq!(m.confidence(0), 0.0, "a single token's match says nothing");
    }

    #[test]
    fn the_extent_is_capped() {
        let mut ctx: Vec<TokenId> = (0..200).map(|i| i % 100).collect();
        ctx.extend(0..3);
        let m = find_match(&ctx, 2, 4).expect("match");
        assert_eq!(m.extent, MAX_EXTENT);
        assert_eq!(ctx[m.from], 3);
    }
}
