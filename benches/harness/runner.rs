//! In-process generations: the models are loaded once, every mode runs on the same verifier, and a
//! group of prompts runs at once (one thread and one verifier session each) to measure concurrency.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use duet_drafter::{DiffusionModel, SamplerConfig};
use duet_verifier::{TokenId, Verifier};

use super::lockstep::{ChunkedPrefill, Seat};
use super::modes::{BenchMode, Transport};
use super::sample::{DeliveryClock, Output, Sample, rate};
use crate::drafters::{ArModelDrafter, DiffusionDrafter, HintPolicy, NgramDrafter};
use crate::engine::{self, DraftPolicy, Drafter, GenerateParams, Generation, PolicyMemory, StopReason};

/// A suite prompt made ready: its text as sent to a server and its tokens as the verifier sees them.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// Suite name.
    pub suite: String,
    /// Prompt id.
    pub id: String,
    /// The full prompt text (chat template applied for `messages` prompts).
    pub text: String,
    /// The prompt's tokens.
    pub tokens: Vec<TokenId>,
    /// Tokens to generate.
    pub max_tokens: usize,
}

/// The models of a run, loaded once and shared by every mode.
#[derive(Debug)]
pub struct Models {
    /// The verifier (hidden states on when the diffusion drafter is conditioned on them).
    pub verifier: Verifier,
    /// Whether the verifier returns hidden states (all modes then pay for them in prompt evaluation).
    pub features: bool,
    /// The block-diffusion drafter, when a mode uses it.
    pub diffusion: Option<Arc<DiffusionModel>>,
    /// How it denoises.
    pub sampler: SamplerConfig,
    /// What it is told about the previous block.
    pub hints: HintPolicy,
    /// The small AR drafting model, when `hybrid-ar-model` runs.
    pub drafting_model: Option<Verifier>,
    /// How the hybrid modes choose their draft length.
    pub draft_policy: DraftPolicy,
    /// Per mode, what the cost-aware policy learnt in the mode's earlier generations, carried from
    /// prompt to prompt as `duet serve` carries it from request to request.
    pub policy_memories: Mutex<HashMap<BenchMode, Arc<PolicyMemory>>>,
}

impl Models {
    fn policy_memory(&self, mode: BenchMode) -> Arc<PolicyMemory> {
        let mut memories = self.policy_memories.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        memories.entry(mode).or_default().clone()
    }

    fn drafter(&self, mode: BenchMode) -> anyhow::Result<Option<Box<dyn Drafter>>> {
        Ok(match mode {
            BenchMode::Ar => None,
            BenchMode::HybridNgram => Some(Box::new(NgramDrafter::default())),
            BenchMode::HybridDiffusion | BenchMode::Diffusion => {
                let model = self.diffusion.clone().context("the diffusion drafter is not loaded")?;
                Some(Box::new(DiffusionDrafter::new(model, self.sampler.clone(), self.hints)?))
            }
            BenchMode::HybridArModel => {
                let model = self.drafting_model.as_ref().context("the drafting model is not loaded")?;
                Some(Box::new(ArModelDrafter::new(model, self.verifier.info(), 0.0)?))
            }
        })
    }

    /// Generates `prompt` in `mode`, timing every delivery of tokens. With a `seat`, the generation
    /// takes turns with others ([`lockstep`](super::lockstep)): it starts on its group's first turn,
    /// ends its part of the turn at every delivery, and its clock counts its group's turns only.
    pub fn generate(
        &self,
        mode: BenchMode,
        prompt: &PreparedPrompt,
        block_size: usize,
        max_tokens: usize,
        seat: Option<&Seat<'_>>,
    ) -> anyhow::Result<(Generation, super::sample::Deliveries)> {
        let info = self.verifier.info();
        let draft_policy = if mode.engine_mode() == crate::engine::Mode::Hybrid { self.draft_policy.clone() } else { DraftPolicy::Fixed };
        let policy_memory = Some(self.policy_memory(mode));
        let params = GenerateParams { max_tokens, mode: mode.engine_mode(), block_size, draft_policy, policy_memory, ..GenerateParams::default() };
        let is_eog = |t: TokenId| info.is_eog(t);
        if let Some(seat) = seat {
            seat.wait();
        }
        let clock = RefCell::new(DeliveryClock::start());
        let take_turn = || {
            if let Some(seat) = seat {
                let away = seat.take_turns();
                clock.borrow_mut().exclude(away);
            }
        };
        let mut drafter = self.drafter(mode)?;
        let mut on_tokens = |_: &[TokenId]| {
            clock.borrow_mut().delivered();
            take_turn();
            true
        };
        let mut prefill_paused_s = 0.0;
        let mut generation = match (mode, drafter.as_mut()) {
            (BenchMode::Diffusion, Some(d)) => {
                engine::generate_unverified(d.as_mut(), &prompt.tokens, &params, info.ctx_size, &is_eog, &mut on_tokens)?
            }
            (_, d) => {
                let mut session = match seat.and_then(Seat::take_session) {
                    Some(s) => s,
                    None => self.verifier.open_session().context("opening a verifier session")?,
                };
                let d = d.map(|d| d.as_mut() as &mut dyn Drafter);
                let generation = if seat.is_some() {
                    let between = || {
                        let before = clock.borrow().paused_s();
                        take_turn();
                        clock.borrow().paused_s() - before
                    };
                    let mut chunked = ChunkedPrefill::new(&mut session, &between);
                    let g = engine::generate(&mut chunked, d, &prompt.tokens, &params, &is_eog, &mut on_tokens)?;
                    prefill_paused_s = chunked.paused_s();
                    g
                } else {
                    engine::generate(&mut session, d, &prompt.tokens, &params, &is_eog, &mut on_tokens)?
                };
                // Closed before the seat is left, so within this mode's turn: closing moves the
                // sessions above down (copies of their caches), work no other mode's call should wait on.
                session.close().context("closing a verifier session")?;
                generation
            }
        };
        let deliveries = clock.into_inner();
        if seat.is_some() {
            // The engine's clocks ran on while the others took their turns.
            let s = &mut generation.stats;
            s.wall_s = (s.wall_s - deliveries.paused_s()).max(0.0);
            s.ttft_s = (s.ttft_s - prefill_paused_s).max(0.0);
            s.verifier_s = (s.verifier_s - prefill_paused_s).max(0.0);
            s.tokens_per_s = rate(s.generated_tokens, s.wall_s);
        }
        Ok((generation, deliveries.finish()))
    }

    /// Runs one measured generation (taking turns when it has a `seat`).
    pub fn sample(
        &self,
        mode: BenchMode,
        prompt: &PreparedPrompt,
        block_size: usize,
        concurrency: usize,
        seat: Option<&Seat<'_>>,
    ) -> anyhow::Result<Sample> {
        let (g, d) = self
            .generate(mode, prompt, block_size, prompt.max_tokens, seat)
            .with_context(|| format!("{}/{} in mode {}", prompt.suite, prompt.id, mode.label()))?;
        let info = self.verifier.info();
        Ok(Sample {
            suite: prompt.suite.clone(),
            prompt: prompt.id.clone(),
            mode: mode.into(),
            transport: Transport::InProcess,
            concurrency,
            generated_tokens: g.tokens.len(),
            stop: stop_name(g.stop).into(),
            ttft_s: d.ttft_s,
            e2e_s: d.e2e_s,
            tokens_per_s: rate(g.tokens.len(), d.e2e_s),
            deliveries: d.count,
            itl_s: d.gaps_s,
            stats: Some(g.stats),
            accepted_prediction_tokens: None,
            rejected_prediction_tokens: None,
            text: String::from_utf8_lossy(&info.detokenize(&g.tokens)).into_owned(),
            output: Output::Tokens(g.tokens),
        })
    }
}

/// The engine's stop reason as the JSON file names it.
pub fn stop_name(s: StopReason) -> &'static str {
    match s {
        StopReason::Eos => "eos",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextFull => "context_full",
    }
}

/// Checks that a repeated run of a prompt group produced what the first run did: greedy decoding
/// (and the seeded diffusion mode) must be deterministic, or neither the lossless check nor the
/// best-of-runs timing means anything.
pub fn same_outputs(first: &[Sample], again: &[Sample]) -> anyhow::Result<()> {
    for (a, b) in first.iter().zip(again) {
        if a.output != b.output {
            anyhow::bail!(
                "{}/{} in mode {} ({}, concurrency {}): a repeated run produced a different output than the first",
                a.suite,
                a.prompt,
                a.mode.label(),
                a.transport.label(),
                a.concurrency
            );
        }
    }
    Ok(())
}

/// Runs `prompts` at once, one thread each, all in `mode`; returns their samples in prompt order and
/// the group's wall time.
pub fn run_group<F>(prompts: &[&PreparedPrompt], run: F) -> anyhow::Result<(Vec<Sample>, f64)>
where
    F: Fn(&PreparedPrompt) -> anyhow::Result<Sample> + Sync,
{
    let started = Instant::now();
    let run = &run;
    let results: Vec<anyhow::Result<Sample>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts.iter().map(|&p| scope.spawn(move || run(p))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a generation thread panicked"))))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    Ok((results.into_iter().collect::<anyhow::Result<Vec<_>>>()?, wall))
}
