//! A drafter that is down or slow must cost speed, never correctness or a stream of errors.
//!
//! [`FallbackDrafter`] wraps any drafter. When the drafter fails (an error, or no answer within a
//! remote drafter's deadline), the round goes on as a plain verifier step — lossless, since greedy
//! AR steps are what the verifier would emit anyway — and the drafter is left alone for a back-off
//! window (0.5 s, doubling to 10 s) shared through [`DrafterHealth`] by every generation using it,
//! so a dead drafter process costs one failed call per window instead of one per round. After the
//! window one generation probes it; when it answers, every generation speculates again.
//!
//! Every round without a draft counts in `duet_drafter_fallbacks_total{drafter, reason}`
//! (`error`, `timeout`, `backoff`), and an outage logs one warning when it starts and one line
//! when it ends, not one per round.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{Draft, DraftError, DraftFailure, DraftRequest, Drafter};
use crate::service::metrics as m;

/// First back-off window after a failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest back-off window.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    /// Failures in a row.
    failures: u32,
    /// End of the current back-off window.
    retry_at: Option<Instant>,
    /// Whether a generation is probing the drafter after the window (the others keep skipping).
    probing: bool,
    /// When the current outage began.
    down_since: Option<Instant>,
}

/// Whether to call the drafter this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Call it.
    Call,
    /// Skip it: it failed a moment ago.
    Skip,
}

/// The shared state of one drafter (or drafter service): failures in a row and the back-off
/// window. Clones share it.
#[derive(Debug, Clone)]
pub struct DrafterHealth {
    name: String,
    first: Duration,
    max: Duration,
    state: Arc<Mutex<State>>,
}

impl DrafterHealth {
    /// Health of the drafter `name` (used in logs) with the default windows (0.5 s doubling to 10 s).
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_backoff(name, FIRST_BACKOFF, MAX_BACKOFF)
    }

    /// Health with other back-off windows (tests use short ones).
    pub fn with_backoff(name: impl Into<String>, first: Duration, max: Duration) -> Self {
        Self { name: name.into(), first, max: max.max(first), state: Arc::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the drafter is in an outage (failed and not yet answered again).
    pub fn is_down(&self) -> bool {
        self.state().down_since.is_some()
    }

    /// Call or skip this round. After a window ends, one caller gets [`Attempt::Call`] (the probe)
    /// and the others skip until it reports.
    pub fn attempt(&self) -> Attempt {
        let mut s = self.state();
        match s.retry_at {
            None => Attempt::Call,
            Some(t) if Instant::now() < t || s.probing => Attempt::Skip,
            Some(_) => {
                s.probing = true;
                Attempt::Call
            }
        }
    }

    /// The drafter answered: speculation resumes everywhere.
    pub fn succeeded(&self) {
        let mut s = self.state();
        if let Some(since) = s.down_since {
            tracing::warn!(
                drafter = %self.name,
                outage_s = since.elapsed().as_secs_f64(),
                "the drafter answers again; speculation resumes"
            );
        }
        *s = State::default();
    }

    /// The drafter failed: open (or lengthen) the back-off window.
    pub fn failed(&self, error: &DraftError) {
        let mut s = self.state();
        let window = self.first.saturating_mul(1u32 << s.failures.min(16)).min(self.max);
        s.failures = s.failures.saturating_add(1);
        s.retry_at = Some(Instant::now() + window);
        s.probing = false;
        if s.down_since.is_none() {
            s.down_since = Some(Instant::now());
            tracing::warn!(
                drafter = %self.name,
                error = %error,
                "the drafter failed; generations take plain verifier steps (same output, lower speed) \
                 and retry it after a back-off of {window:?} doubling up to {:?}",
                self.max
            );
        } else {
            tracing::debug!(drafter = %self.name, error = %error, retry_in = ?window, "the drafter failed again");
        }
    }

    /// Time left in the current back-off window.
    pub fn window_left(&self) -> Option<Duration> {
        self.state().retry_at.map(|t| t.saturating_duration_since(Instant::now()))
    }
}

/// A drafter whose failures turn into AR rounds with back-off (see the module docs).
///
/// Every round without a draft still returns an error, so the engine counts it in
/// `Stats::drafter_failures`; the engine logs those at debug level only.
pub struct FallbackDrafter {
    inner: Box<dyn Drafter>,
    health: DrafterHealth,
    /// The `drafter` label of the metric.
    label: &'static str,
}

impl std::fmt::Debug for FallbackDrafter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackDrafter").field("drafter", &self.inner.name()).field("health", &self.health).finish()
    }
}

impl FallbackDrafter {
    /// Wraps `inner`; `health` is shared by every generation using the same drafter (service).
    pub fn new(inner: Box<dyn Drafter>, health: DrafterHealth, label: &'static str) -> Self {
        Self { inner, health, label }
    }

    fn count(&self, kind: DraftFailure) {
        metrics::counter!(m::DRAFTER_FALLBACKS, "drafter" => self.label, "reason" => kind.label()).increment(1);
    }
}

impl Drafter for FallbackDrafter {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        if req.max_len == 0 {
            return Ok(Draft::default());
        }
        if self.health.attempt() == Attempt::Skip {
            self.count(DraftFailure::Backoff);
            return Err(DraftError {
                drafter: self.inner.name().to_owned(),
                reason: "skipped while the drafter is in its back-off window".into(),
                kind: DraftFailure::Backoff,
            });
        }
        match self.inner.propose(req) {
            Ok(draft) => {
                self.health.succeeded();
                Ok(draft)
            }
            Err(e) => {
                self.health.failed(&e);
                self.count(e.kind);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::engine::{self, GenerateParams, Mode};

    /// Answers with its script: `Some(true)` drafts the right tokens, `Some(false)` fails,
    /// `None` (script over) drafts right.
    struct Scripted {
        script: VecDeque<bool>,
        calls: usize,
    }

    impl Drafter for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
            self.calls += 1;
            if self.script.pop_front() == Some(false) {
                return Err(DraftError { drafter: "scripted".into(), reason: "down".into(), kind: DraftFailure::Timeout });
            }
            let mut last = req.context.last().copied().unwrap_or(0);
            let tokens: Vec<u32> = (0..req.max_len)
                .map(|_| {
                    last = toy(last);
                    last
                })
                .collect();
            Ok(Draft { probs: vec![1.0; tokens.len()], tokens, ..Draft::default() })
        }
    }

    fn toy(t: u32) -> u32 {
        (t + 1) % 50 + 1
    }

    fn request(ctx: &[u32]) -> DraftRequest<'_> {
        DraftRequest { context: ctx, previous: None, max_len: 4, features: None }
    }

    #[test]
    fn a_failure_opens_a_window_that_doubles_and_is_capped() {
        let h = DrafterHealth::with_backoff("t", Duration::from_millis(100), Duration::from_millis(300));
        assert_eq!(h.attempt(), Attempt::Call);
        let e = DraftError::new("t", "down");
        h.failed(&e);
        assert!(h.is_down());
        assert_eq!(h.attempt(), Attempt::Skip);
        for _ in 0..40 {
            h.failed(&e);
        }
        assert!(h.window_left().is_some_and(|w| w <= Duration::from_millis(300)));
        h.succeeded();
        assert!(!h.is_down());
        assert_eq!(h.attempt(), Attempt::Call);
    }

    #[test]
    fn after_the_window_one_caller_probes_and_the_others_skip() {
        let h = DrafterHealth::with_backoff("t", Duration::ZERO, Duration::ZERO);
        h.failed(&DraftError::new("t", "down"));
        assert_eq!(h.attempt(), Attempt::Call, "the window is over: probe");
        assert_eq!(h.attempt(), Attempt::Skip, "a probe is under way");
        h.succeeded();
        assert_eq!(h.attempt(), Attempt::Call);
    }

    #[test]
    fn rounds_in_the_window_skip_the_drafter_and_report_backoff() {
        let health = DrafterHealth::with_backoff("t", Duration::from_secs(60), Duration::from_secs(60));
        let mut d = FallbackDrafter::new(Box::new(Scripted { script: [false].into(), calls: 0 }), health.clone(), "t");
        let ctx = [1, 2, 3];
        assert_eq!(d.propose(&request(&ctx)).map_err(|e| e.kind).err(), Some(DraftFailure::Timeout));
        for _ in 0..5 {
            assert_eq!(d.propose(&request(&ctx)).map_err(|e| e.kind).err(), Some(DraftFailure::Backoff));
        }
        // A second generation on the same drafter skips it too.
        let mut other = FallbackDrafter::new(Box::new(Scripted { script: VecDeque::new(), calls: 0 }), health, "t");
        assert_eq!(other.propose(&request(&ctx)).map_err(|e| e.kind).err(), Some(DraftFailure::Backoff));
    }

    /// A toy verifier whose greedy continuation is `toy`.
    struct ToySession {
        ctx: Vec<u32>,
    }

    impl crate::engine::VerifierSession for ToySession {
        fn prefill(&mut self, prompt: &[u32]) -> Result<duet_verifier::Verdict, duet_verifier::VerifierError> {
            self.ctx = prompt.to_vec();
            self.verify(&[])
        }
        fn step(&mut self) -> Result<duet_verifier::Verdict, duet_verifier::VerifierError> {
            self.verify(&[])
        }
        fn verify(&mut self, draft: &[u32]) -> Result<duet_verifier::Verdict, duet_verifier::VerifierError> {
            use duet_verifier::{Choice, Verdict};
            let mut choices = Vec::new();
            let mut accepted = 0;
            loop {
                let c = Choice { token: toy(*self.ctx.last().unwrap_or(&0)), prob: 1.0, margin: 1.0 };
                choices.push(c);
                match draft.get(accepted) {
                    Some(&t) if t == c.token => {
                        self.ctx.push(t);
                        accepted += 1;
                    }
                    _ => break,
                }
            }
            // The toy's context ends with the pending token.
            self.ctx.push(choices[accepted].token);
            Ok(Verdict { accepted, next: choices[accepted], choices, features: vec![], next_dist: vec![], batch: Default::default() })
        }
        fn room(&self) -> usize {
            10_000 - self.ctx.len()
        }
    }

    #[test]
    fn a_drafter_that_fails_then_recovers_leaves_the_output_unchanged_and_speculation_resumes() {
        let params = GenerateParams { max_tokens: 80, mode: Mode::Hybrid, block_size: 4, ..GenerateParams::default() };
        let prompt = [1u32, 2, 3];
        let ar = engine::generate(&mut ToySession { ctx: vec![] }, None, &prompt, &params, &|_| false, &mut |_| true)
            .expect("ar");
        // Fails its first three calls; the zero-length window lets every round probe it.
        let health = DrafterHealth::with_backoff("t", Duration::ZERO, Duration::ZERO);
        let mut d = FallbackDrafter::new(Box::new(Scripted { script: [false, false, false].into(), calls: 0 }), health.clone(), "t");
        let g = engine::generate(&mut ToySession { ctx: vec![] }, Some(&mut d), &prompt, &params, &|_| false, &mut |_| true)
            .expect("hybrid");
        assert_eq!(g.tokens, ar.tokens);
        assert_eq!(g.stats.drafter_failures, 3);
        assert!(g.stats.accepted > 0, "speculation never resumed: {:?}", g.stats);
        assert!(!health.is_down());
    }
}
