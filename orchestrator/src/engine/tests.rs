//! Engine behaviour on a tiny deterministic stand-in for the verifier.

use duet_verifier::greedy::accept_prefix;
use duet_verifier::{Choice, TokenId, Verdict, VerifierError};

use super::*;
use crate::drafters::NgramDrafter;

/// A toy language model: the next token is a fixed function of the last two tokens, over a vocabulary
/// of 12 tokens where 11 is end-of-generation. Periodic enough for n-gram lookup to hit sometimes.
fn next_token(ctx: &[TokenId]) -> TokenId {
    let a = ctx.last().copied().unwrap_or(0);
    let b = ctx.len().checked_sub(2).map_or(0, |i| ctx[i]);
    (a * 7 + b * 3 + 1) % 11
}

struct FakeSession {
    ctx: Vec<TokenId>,
    pending: Option<TokenId>,
    limit: usize,
    eos_after: Option<usize>,
    /// Return one feature per evaluated token: the token id itself.
    features: bool,
}

impl FakeSession {
    fn new(limit: usize) -> Self {
        Self { ctx: vec![], pending: None, limit, eos_after: None, features: false }
    }
    fn choice(&self, ctx: &[TokenId]) -> Choice {
        let token = match self.eos_after {
            Some(n) if ctx.len() >= n => 11,
            _ => next_token(ctx),
        };
        Choice { token, prob: 1.0, margin: 1.0 }
    }
}

impl VerifierSession for FakeSession {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.ctx = prompt.to_vec();
        let c = self.choice(&self.ctx);
        self.pending = Some(c.token);
        let features = if self.features { prompt.iter().map(|&t| t as f32).collect() } else { vec![] };
        Ok(Verdict { accepted: 0, next: c, choices: vec![c], features, next_dist: vec![], batch: Default::default() })
    }
    fn step(&mut self) -> Result<Verdict, VerifierError> {
        self.verify(&[])
    }
    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        assert!(self.ctx.len() + 1 + draft.len() <= self.limit, "verify past the context limit");
        let mut ctx = self.ctx.clone();
        ctx.push(self.pending.expect("pending"));
        let mut choices = Vec::new();
        for i in 0..=draft.len() {
            choices.push(self.choice(&ctx));
            if i < draft.len() {
                ctx.push(draft[i]);
            }
        }
        let accepted = accept_prefix(draft, &choices);
        let added = self.ctx.len();
        self.ctx.push(self.pending.take().expect("pending"));
        self.ctx.extend_from_slice(&draft[..accepted]);
        let features = if self.features { self.ctx[added..].iter().map(|&t| t as f32).collect() } else { vec![] };
        choices.truncate(accepted + 1);
        let next = choices[accepted];
        self.pending = Some(next.token);
        Ok(Verdict { accepted, next, choices, features, next_dist: vec![], batch: Default::default() })
    }
    fn room(&self) -> usize {
        self.limit - self.ctx.len()
    }
}

/// Proposes a fixed pseudo-random block: mostly wrong, sometimes right.
struct NoisyDrafter(u32);
impl Drafter for NoisyDrafter {
    fn name(&self) -> &str {
        "noisy"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let mut ctx = req.context.to_vec();
        let mut tokens = vec![];
        for _ in 0..req.max_len {
            self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let t = if (self.0 >> 16) % 3 == 0 { (self.0 >> 8) % 11 } else { next_token(&ctx) };
            tokens.push(t);
            ctx.push(t);
        }
        Ok(Draft { probs: vec![1.0; tokens.len()], tokens, ..Draft::default() })
    }
}

struct FailingDrafter;
impl Drafter for FailingDrafter {
    fn name(&self) -> &str {
        "failing"
    }
    fn propose(&mut self, _: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        Err(DraftError::new("failing", "down"))
    }
}

fn params(mode: Mode, max_tokens: usize, block_size: usize) -> GenerateParams {
    GenerateParams { max_tokens, mode, block_size, ..GenerateParams::default() }
}

fn run(session: &mut FakeSession, drafter: Option<&mut dyn Drafter>, p: GenerateParams) -> Generation {
    generate(session, drafter, &[1, 2, 3], &p, &|t| t == 11, &mut |_| true).expect("generation")
}

#[test]
fn greedy_hybrid_equals_ar_with_any_drafter() {
    let ar = run(&mut FakeSession::new(1000), None, params(Mode::Ar, 200, 8));
    for block in [1, 3, 8, 16] {
        let ng = run(&mut FakeSession::new(1000), Some(&mut NgramDrafter::new(1, 3)), params(Mode::Hybrid, 200, block));
        assert_eq!(ng.tokens, ar.tokens, "ngram, block {block}");
        let noisy = run(&mut FakeSession::new(1000), Some(&mut NoisyDrafter(block as u32)), params(Mode::Hybrid, 200, block));
        assert_eq!(noisy.tokens, ar.tokens, "noisy, block {block}");
        assert!(noisy.stats.accepted > 0 && noisy.stats.accepted < noisy.stats.drafted);
    }
}

#[test]
fn max_tokens_is_exact_even_when_a_block_overshoots() {
    for max in [1, 2, 5, 17] {
        let g = run(&mut FakeSession::new(1000), Some(&mut NoisyDrafter(7)), params(Mode::Hybrid, max, 8));
        assert_eq!(g.tokens.len(), max);
        assert_eq!(g.stop, StopReason::MaxTokens);
        assert_eq!(g.stats.generated_tokens, max);
    }
}

#[test]
fn generation_stops_at_end_of_generation_without_emitting_it() {
    let mut s = FakeSession::new(1000);
    s.eos_after = Some(10);
    let g = run(&mut s, Some(&mut NoisyDrafter(1)), params(Mode::Hybrid, 100, 4));
    assert_eq!(g.stop, StopReason::Eos);
    assert_eq!(g.tokens.len(), 7, "3 prompt tokens + 7 generated = 10");
    assert!(!g.tokens.contains(&11));
}

#[test]
fn a_failing_drafter_falls_back_to_ar_steps() {
    let ar = run(&mut FakeSession::new(1000), None, params(Mode::Ar, 30, 8));
    let g = run(&mut FakeSession::new(1000), Some(&mut FailingDrafter), params(Mode::Hybrid, 30, 8));
    assert_eq!(g.tokens, ar.tokens);
    assert_eq!(g.stats.drafter_failures, 28, "the last round has room for no draft");
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let g = run(&mut FakeSession::new(20), Some(&mut NoisyDrafter(3)), params(Mode::Hybrid, 100, 8));
    assert_eq!(g.stop, StopReason::ContextFull);
    let ar = run(&mut FakeSession::new(20), None, params(Mode::Ar, 100, 8));
    assert_eq!(g.tokens, ar.tokens);
}

#[test]
fn bad_requests_are_refused_with_the_field_named() {
    let mut s = FakeSession::new(10);
    let err = |p: GenerateParams, prompt: &[TokenId], s: &mut FakeSession| {
        generate(s, None, prompt, &p, &|_| false, &mut |_| true).unwrap_err().to_string()
    };
    assert!(err(params(Mode::Ar, 0, 8), &[1], &mut s).contains("`max_tokens` must be between 1 and"));
    assert!(err(params(Mode::Ar, 1 << 20, 8), &[1], &mut s).contains("`max_tokens`"));
    assert!(err(params(Mode::Ar, 5, 0), &[1], &mut s).contains("`block_size`"));
    assert!(err(params(Mode::Ar, 5, 8), &[], &mut s).contains("prompt must not be empty"));
    assert!(err(params(Mode::Ar, 5, 8), &[1; 10], &mut s).contains("the context holds 10"));
}

#[test]
fn stats_count_rounds_and_tau() {
    let g = run(&mut FakeSession::new(1000), Some(&mut NoisyDrafter(5)), params(Mode::Hybrid, 60, 4));
    let s = &g.stats;
    assert_eq!(s.rounds, s.draft_lengths.len());
    assert!((s.mean_accepted_length - (s.rounds + s.accepted) as f64 / s.rounds as f64).abs() < 1e-9);
    let ar = run(&mut FakeSession::new(1000), None, params(Mode::Ar, 60, 4));
    assert_eq!(ar.stats.rounds, 59);
    assert_eq!(ar.stats.mean_accepted_length, 1.0);
}

#[test]
fn a_cancelled_stream_stops_the_generation() {
    let mut n = 0;
    let r = generate(&mut FakeSession::new(100), None, &[1], &params(Mode::Ar, 50, 4), &|_| false, &mut |_| {
        n += 1;
        n < 3
    });
    assert!(matches!(r, Err(EngineError::Cancelled)));
}

/// Checks that the features handed to it cover exactly the context minus its last token.
struct FeatureChecker(NoisyDrafter, usize);
impl Drafter for FeatureChecker {
    fn name(&self) -> &str {
        "feature-checker"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let f = req.features.expect("features");
        assert_eq!(f.dim, 1);
        assert_eq!(f.rows(), req.context.len() - 1);
        let expect: Vec<f32> = req.context[..f.rows()].iter().map(|&t| t as f32).collect();
        assert_eq!(f.data, &expect[..]);
        self.1 += 1;
        self.0.propose(req)
    }
}

#[test]
fn drafter_features_cover_every_verified_context_token() {
    let mut s = FakeSession::new(1000);
    s.features = true;
    let mut d = FeatureChecker(NoisyDrafter(9), 0);
    let g = run(&mut s, Some(&mut d), params(Mode::Hybrid, 80, 6));
    assert!(d.1 > 10);
    assert_eq!(g.tokens.len(), 80);
}

fn cost_aware(mode: Mode, max_tokens: usize, block_size: usize) -> GenerateParams {
    // The 1.5B's curve on this CPU (FACTS.md): a block of 8 costs 4.4 plain steps.
    let curve = CostCurve::from_times(&[0, 2, 4, 8], &[0.03, 0.048, 0.078, 0.132]).expect("curve");
    GenerateParams { draft_policy: DraftPolicy::CostAware(curve), ..params(mode, max_tokens, block_size) }
}

#[test]
fn cost_aware_hybrid_stays_greedy_exact_and_records_its_lengths() {
    let ar = run(&mut FakeSession::new(1000), None, params(Mode::Ar, 200, 8));
    let g = run(&mut FakeSession::new(1000), Some(&mut NoisyDrafter(4)), cost_aware(Mode::Hybrid, 200, 8));
    assert_eq!(g.tokens, ar.tokens);
    let s = &g.stats;
    assert_eq!(s.offered_lengths.len(), s.rounds);
    assert!(s.draft_lengths.iter().zip(&s.offered_lengths).all(|(sent, offered)| sent <= offered));
    assert!(s.draft_lengths.iter().any(|&k| k > 0 && k < 8), "shorter blocks than offered: {:?}", s.draft_lengths);
    assert!((s.cost_curve[8] - 4.4).abs() < 1e-9);
}

/// Proposes a full block of tokens the verifier never picks.
struct WrongDrafter;
impl Drafter for WrongDrafter {
    fn name(&self) -> &str {
        "wrong"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let tokens = vec![11; req.max_len];
        Ok(Draft { probs: vec![1.0; tokens.len()], tokens, ..Draft::default() })
    }
}

#[test]
fn a_drafter_that_never_hits_is_replaced_by_plain_steps() {
    let g = run(&mut FakeSession::new(1000), Some(&mut WrongDrafter), cost_aware(Mode::Hybrid, 200, 8));
    let drafted_rounds = g.stats.draft_lengths.iter().filter(|&&k| k > 0).count();
    assert!(drafted_rounds <= 8 + g.stats.rounds / policy::PROBE_EVERY, "{:?}", g.stats.draft_lengths);
    assert_eq!(g.tokens, run(&mut FakeSession::new(1000), None, params(Mode::Ar, 200, 8)).tokens);
    // With a fixed block every round pays for the whole block.
    let fixed = run(&mut FakeSession::new(1000), Some(&mut WrongDrafter), params(Mode::Hybrid, 200, 8));
    assert!(fixed.stats.drafted > 4 * g.stats.drafted, "fixed {} vs cost-aware {}", fixed.stats.drafted, g.stats.drafted);
}

#[test]
fn a_session_that_cannot_sample_refuses_a_temperature() {
    let p = GenerateParams {
        sampling: duet_verifier::SamplingParams { temperature: 0.8, ..Default::default() },
        ..params(Mode::Ar, 5, 4)
    };
    let e = generate(&mut FakeSession::new(100), None, &[1], &p, &|_| false, &mut |_| true).expect_err("refused");
    assert!(e.to_string().contains("cannot sample"), "{e}");
    let bad = GenerateParams {
        sampling: duet_verifier::SamplingParams { temperature: 0.8, top_p: 0.0, ..Default::default() },
        ..params(Mode::Ar, 5, 4)
    };
    let e = generate(&mut FakeSession::new(100), None, &[1], &bad, &|_| false, &mut |_| true).expect_err("refused");
    assert!(e.to_string().contains("`top_p`"), "{e}");
}
