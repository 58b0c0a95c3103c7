//! The verifier side of the engine, as a trait so the same loop runs in process or over gRPC.

use duet_verifier::{SamplingParams, SparseDist, TokenId, Verdict, VerifierError};

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

    /// Sets how the session picks tokens (temperature, top-k, top-p, seed) before `prefill`.
    /// Greedy by default; a session that cannot sample refuses anything else.
    fn set_sampling(&mut self, sampling: &SamplingParams) -> Result<(), VerifierError> {
        if sampling.is_greedy() {
            Ok(())
        } else {
            Err(VerifierError::InvalidRequest("this verifier session cannot sample; use temperature 0".into()))
        }
    }

    /// [`VerifierSession::verify`] with the distribution each draft token was drawn from, for
    /// speculative rejection sampling. Ignoring `q` (the default) judges every draft as
    /// deterministic, which is still exact, only accepts less.
    fn verify_with(&mut self, draft: &[TokenId], q: &[SparseDist]) -> Result<Verdict, VerifierError> {
        let _ = q;
        self.verify(draft)
    }
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
    fn set_sampling(&mut self, sampling: &SamplingParams) -> Result<(), VerifierError> {
        duet_verifier::Session::set_sampling(self, *sampling)
    }
    fn verify_with(&mut self, draft: &[TokenId], q: &[SparseDist]) -> Result<Verdict, VerifierError> {
        duet_verifier::Session::verify_with(self, draft, q)
    }
}
