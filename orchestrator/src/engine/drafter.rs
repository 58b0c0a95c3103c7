//! The drafter side of the engine: what a drafter is given and what it returns.

use duet_verifier::{SparseDist, TokenId};

/// What the engine asks of a drafter each round.
#[derive(Debug, Clone, Copy)]
pub struct DraftRequest<'a> {
    /// Prompt plus every token emitted so far; the block continues right after it.
    pub context: &'a [TokenId],
    /// The previous round's block and how the verifier judged it, if there was one.
    pub previous: Option<&'a PreviousBlock>,
    /// Most tokens the block may hold.
    pub max_len: usize,
    /// The verifier's hidden states for the context tokens it has evaluated (every token but the
    /// last, whose hidden state comes with the next verification), when the verifier returns them.
    pub features: Option<Features<'a>>,
}

/// Verifier hidden states, one row of `dim` floats per context token, in position order.
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    /// Row-major `rows × dim` floats.
    pub data: &'a [f32],
    /// Floats per row (the verifier's hidden width).
    pub dim: usize,
}

impl Features<'_> {
    /// Number of rows (context tokens covered).
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }
}

/// The previous round's block as the verifier left it: an accepted prefix, the verifier's correction
/// at the first rejected position, and the rejected positions after it re-masked. The tail after the
/// correction lines up with the start of the next block, so a drafter may keep it as hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousBlock {
    /// The block as drafted.
    pub draft: Vec<TokenId>,
    /// How many of its tokens were accepted.
    pub accepted: usize,
    /// The verifier's token after the accepted prefix (correction, or bonus after a full accept).
    pub correction: TokenId,
}

impl PreviousBlock {
    /// The block re-masked: accepted tokens, then the correction, then `None` for every rejected
    /// position after it.
    pub fn remasked(&self) -> Vec<Option<TokenId>> {
        let mut out: Vec<Option<TokenId>> = self.draft[..self.accepted].iter().copied().map(Some).collect();
        if self.accepted < self.draft.len() {
            out.push(Some(self.correction));
            out.resize(self.draft.len(), None);
        }
        out
    }

    /// The drafted tokens after the rejected one, aligned with the start of the next block.
    pub fn rejected_tail(&self) -> &[TokenId] {
        self.draft.get(self.accepted + 1..).unwrap_or(&[])
    }
}

/// A proposed block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    /// The draft tokens, in order.
    pub tokens: Vec<TokenId>,
    /// The probability with which each token was drafted (1.0 for a deterministic drafter).
    pub probs: Vec<f32>,
    /// For sampling: the whole distribution q each token was drawn from, given the tokens before
    /// it, as (token, probability) pairs. Missing or empty entries mean "deterministic" (the point
    /// mass on the token), which is exact for any drafter; a sampling drafter that reports its q
    /// (e.g. its top-k, renormalised, which it sampled from) gets more of its drafts accepted.
    pub dists: Vec<SparseDist>,
    /// The drafter's estimate, per position, that the verifier accepts the token given that it
    /// accepted the ones before (for the cost-aware draft length); empty when it has none.
    pub confidences: Vec<f32>,
}

impl Draft {
    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.probs.truncate(len);
        self.dists.truncate(len);
        self.confidences.truncate(len);
    }
}

/// A drafter failure. The engine falls back to a plain AR step: the output stays right.
#[derive(Debug, thiserror::Error)]
#[error("drafter {drafter} failed: {reason}")]
pub struct DraftError {
    /// The drafter's name.
    pub drafter: String,
    /// What went wrong.
    pub reason: String,
    /// Which kind of failure (the `reason` label of `duet_drafter_fallbacks_total`).
    pub kind: DraftFailure,
}

impl DraftError {
    /// A failure of kind [`DraftFailure::Error`].
    pub fn new(drafter: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { drafter: drafter.into(), reason: reason.into(), kind: DraftFailure::Error }
    }
}

/// Why a round went without a draft.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DraftFailure {
    /// The drafter answered with an error (or could not be reached).
    #[default]
    Error,
    /// The drafter did not answer within its time limit.
    Timeout,
    /// The drafter failed a moment ago and is left alone until its back-off window ends.
    Backoff,
}

impl DraftFailure {
    /// The metric label: `error`, `timeout` or `backoff`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Backoff => "backoff",
        }
    }
}

/// Anything that proposes draft blocks.
pub trait Drafter: Send {
    /// Short name for logs and statistics.
    fn name(&self) -> &str;

    /// Proposes up to `req.max_len` tokens continuing `req.context`; an empty block means "no
    /// proposal this round".
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_positions_are_remasked_after_the_correction() {
        let p = PreviousBlock { draft: vec![1, 2, 3, 4, 5], accepted: 2, correction: 9 };
        assert_eq!(p.remasked(), vec![Some(1), Some(2), Some(9), None, None]);
        assert_eq!(p.rejected_tail(), &[4, 5]);
    }

    #[test]
    fn a_fully_accepted_block_has_nothing_masked() {
        let p = PreviousBlock { draft: vec![1, 2], accepted: 2, correction: 7 };
        assert_eq!(p.remasked(), vec![Some(1), Some(2)]);
        assert!(p.rejected_tail().is_empty());
    }
}
