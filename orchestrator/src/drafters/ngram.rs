//! N-gram prompt lookup: propose the continuation of the latest earlier occurrence of the context's
//! last n tokens, trying the longest n first. Costs microseconds and wins where the output copies the
//! input (edits, refactors, quoting); proposes nothing when there is no match, so the engine takes a
//! plain step instead of paying for a block that will be rejected.

use duet_verifier::TokenId;

use crate::engine::{Draft, DraftError, DraftRequest, Drafter};

/// Longest n-gram tried.
pub const DEFAULT_MAX_NGRAM: usize = 4;
/// Shortest n-gram that counts as a match: single tokens match almost anywhere and mostly mislead.
pub const DEFAULT_MIN_NGRAM: usize = 2;

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

/// The continuation (at most `max_len` tokens) after the latest earlier occurrence of the longest
/// suffix of `context` of `min_n..=max_n` tokens.
pub fn lookup(context: &[TokenId], min_n: usize, max_n: usize, max_len: usize) -> &[TokenId] {
    let len = context.len();
    for n in (min_n..=max_n.min(len.saturating_sub(1))).rev() {
        let suffix = &context[len - n..];
        // Latest occurrence that ends before the suffix itself and has something after it.
        if let Some(start) = (0..len - n).rev().find(|&s| &context[s..s + n] == suffix) {
            let from = start + n;
            return &context[from..(from + max_len).min(len)];
        }
    }
    &[]
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &str {
        "ngram"
    }

    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let tokens = lookup(req.context, self.min_ngram, self.max_ngram, req.max_len).to_vec();
        // Deterministic: each token is drafted with probability one.
        let probs = vec![1.0; tokens.len()];
        Ok(Draft { tokens, probs, ..Draft::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_the_continuation_of_the_latest_match() {
        // "1 2 3 9 | 1 2 3 7 | 1 2" → latest "1 2" is followed by "3 7 1 2".
        let ctx = [1, 2, 3, 9, 1, 2, 3, 7, 1, 2];
        assert_eq!(lookup(&ctx, 2, 4, 3), &[3, 7, 1]);
    }

    #[test]
    fn prefers_the_longest_ngram() {
        // "5 1 2" occurs once (followed by 8); the bigram "1 2" occurs later, followed by 6.
        let ctx = [5, 1, 2, 8, 1, 2, 6, 5, 1, 2];
        assert_eq!(lookup(&ctx, 2, 3, 2), &[8, 1]);
    }

    #[test]
    fn proposes_nothing_without_a_match() {
        assert!(lookup(&[1, 2, 3, 4], 2, 4, 8).is_empty());
    }

    #[test]
    fn respects_max_len() {
        let ctx = [1, 2, 3, 4, 5, 1, 2];
        assert_eq!(lookup(&ctx, 2, 4, 2), &[3, 4]);
    }

    #[test]
    fn handles_tiny_contexts() {
        assert!(lookup(&[], 2, 4, 8).is_empty());
        assert!(lookup(&[1], 1, 4, 8).is_empty());
        assert_eq!(lookup(&[1, 1], 1, 4, 8), &[1]);
    }
}
