//! The verifier side of the engine, as a trait so the same loop runs in process or over gRPC.

use duet_verifier::{TokenId, Verdict, VerifierError};

/// One generation's sequence on a verifier.
pub trait VerifierSession {
    /// Evaluates the prompt; `next` is the verifier's first choice.
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError>;
    /// Evaluates the pending token alone; `next` is the next choice.
    fn step(&mut self) -> Result<Verdict, VerifierError>;
    /// Evaluates the pending token and the draft in one pass; accepts the longest matching prefix.
    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError>;
    /// Tokens the session can still hold.
    fn room(&self) -> usize;
}

impl VerifierSession for duet_verifier::Session {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        duet_verifier::Session::prefill(self, prompt)
    }
    fn step(&mut self) -> Result<Verdict, VerifierError> {
        duet_verifier::Session::step(self)
    }
    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        duet_verifier::Session::verify(self, draft)
    }
    fn room(&self) -> usize {
        duet_verifier::Session::room(self)
    }
}
