//! The speculative engine: propose → verify → accept → re-mask, one round at a time.
//!
//! Each round the drafter proposes a block of tokens continuing the context; the verifier evaluates its
//! pending token plus the whole block in one batched pass, accepts the longest prefix that matches its
//! own greedy choices and adds one token of its own (the correction, or a bonus after a full accept).
//! The rejected tail of the block goes back to the drafter in the next round ([`PreviousBlock`]). With
//! no draft (the drafter found nothing, failed, or there is no room) the round is a plain AR step, so
//! every emitted token is the verifier's own greedy choice: the output equals verifier-only decoding.
//! When sampling, the verifier accepts drafts by speculative rejection sampling instead, and the
//! output is distributed exactly as verifier-only sampling. How many of the drafter's tokens a round
//! sends is fixed or chosen from the verifier's cost curve and the drafter's confidence ([`policy`]).

mod drafter;
pub mod floor;
pub mod policy;
mod round;
mod stats;
mod unverified;
mod verifier;

pub use drafter::{Draft, DraftError, DraftFailure, DraftRequest, Drafter, Features, PreviousBlock};
pub use policy::{CostCurve, DraftPolicy, PolicyMemory};
pub use round::{GenerateParams, Generation, MAX_BLOCK_SIZE, MAX_TOKENS_LIMIT, Mode, StopReason, generate};
pub use stats::Stats;
pub use unverified::generate_unverified;
pub use verifier::VerifierSession;

/// Errors that end a generation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is invalid; the message names the field and the limit.
    #[error("{0}")]
    Invalid(String),
    /// The verifier failed.
    #[error(transparent)]
    Verifier(#[from] duet_verifier::VerifierError),
    /// The client stopped listening.
    #[error("the generation was cancelled")]
    Cancelled,
}

#[cfg(test)]
mod tests;
