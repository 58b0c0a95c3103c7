//! Wrappers that time every verifier round and drafter proposal and count drafts, so metrics and
//! usage are right however a generation ends (a stop string cancels the engine before it returns
//! its own statistics).

use std::time::Instant;

use duet_verifier::{SamplingParams, SparseDist, TokenId, Verdict, VerifierError};

use crate::engine::{Draft, DraftError, DraftFailure, DraftRequest, Drafter, VerifierSession};

use super::metrics as m;

/// A verifier session that records each round.
pub(crate) struct TimedSession<'a> {
    pub inner: &'a mut dyn VerifierSession,
    pub drafter: &'static str,
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
    pub verifier_s: f64,
    /// Whether rounds may carry drafts (hybrid mode): then each round's draft length is recorded,
    /// zero included (the cost-aware length chose a plain step).
    pub hybrid: bool,
}

impl<'a> TimedSession<'a> {
    pub fn new(inner: &'a mut dyn VerifierSession, drafter: &'static str, hybrid: bool) -> Self {
        Self { inner, drafter, rounds: 0, drafted: 0, accepted: 0, verifier_s: 0.0, hybrid }
    }

    /// Counts one round of `drafted` drafts, `accepted` of them accepted, that took `dt` seconds.
    fn record(&mut self, drafted: usize, accepted: usize, dt: f64) {
        self.verifier_s += dt;
        self.rounds += 1;
        metrics::histogram!(m::VERIFIER_STEP).record(dt);
        if self.hybrid {
            metrics::histogram!(m::DRAFT_LENGTH, "drafter" => self.drafter).record(drafted as f64);
        }
        if drafted > 0 {
            self.drafted += drafted;
            self.accepted += accepted;
            metrics::counter!(m::DRAFTED_TOKENS, "drafter" => self.drafter).increment(drafted as u64);
            metrics::counter!(m::ACCEPTED_TOKENS, "drafter" => self.drafter).increment(accepted as u64);
            metrics::histogram!(m::ACCEPTED_LENGTH, "drafter" => self.drafter).record(accepted as f64);
        }
    }
}

impl VerifierSession for TimedSession<'_> {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        let t = Instant::now();
        let v = self.inner.prefill(prompt);
        self.verifier_s += t.elapsed().as_secs_f64();
        v
    }

    fn step(&mut self) -> Result<Verdict, VerifierError> {
        self.verify(&[])
    }

    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        let t = Instant::now();
        let v = if draft.is_empty() { self.inner.step()? } else { self.inner.verify(draft)? };
        self.record(draft.len(), v.accepted, t.elapsed().as_secs_f64());
        Ok(v)
    }

    fn room(&self) -> usize {
        self.inner.room()
    }

    fn set_sampling(&mut self, sampling: &SamplingParams) -> Result<(), VerifierError> {
        self.inner.set_sampling(sampling)
    }

    fn verify_with(&mut self, draft: &[TokenId], q: &[SparseDist]) -> Result<Verdict, VerifierError> {
        let t = Instant::now();
        let v = if draft.is_empty() { self.inner.step()? } else { self.inner.verify_with(draft, q)? };
        self.record(draft.len(), v.accepted, t.elapsed().as_secs_f64());
        Ok(v)
    }
}

/// A drafter that records the time of each proposal.
pub(crate) struct TimedDrafter<'a> {
    pub inner: &'a mut dyn Drafter,
    pub name: &'static str,
}

impl Drafter for TimedDrafter<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let t = Instant::now();
        let d = self.inner.propose(req);
        // A round that skipped a backed-off drafter did not draft: it is no drafter step.
        if !matches!(&d, Err(e) if e.kind == DraftFailure::Backoff) {
            metrics::histogram!(m::DRAFTER_STEP, "drafter" => self.name).record(t.elapsed().as_secs_f64());
        }
        d
    }
}
