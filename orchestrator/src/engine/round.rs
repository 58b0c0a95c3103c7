//! The round loop.

use std::sync::Arc;
use std::time::Instant;

use duet_verifier::{Choice, SamplingParams, TokenId};
use serde::Serialize;

use super::policy::{DraftPolicy, LengthPicker, PolicyMemory};
use super::{Draft, DraftRequest, Drafter, EngineError, Features, PreviousBlock, Stats, VerifierSession};

/// Largest `max_tokens` a request may ask for.
pub const MAX_TOKENS_LIMIT: usize = 1 << 16;
/// Largest draft block.
pub const MAX_BLOCK_SIZE: usize = 256;

/// How tokens are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Verifier only: one token per decode call.
    Ar,
    /// Speculative: the drafter proposes blocks, the verifier checks them.
    Hybrid,
    /// The diffusion drafter alone, no verification: fast and lossy.
    Diffusion,
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The session's context is full.
    ContextFull,
}

/// Per-generation settings.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// `ar` or `hybrid`.
    pub mode: Mode,
    /// Most draft tokens per round in hybrid mode.
    pub block_size: usize,
    /// How tokens are picked: greedy (the default) or sampled with a seed.
    pub sampling: SamplingParams,
    /// How many of the drafter's tokens each round sends: all (the default) or a cost-aware choice.
    pub draft_policy: DraftPolicy,
    /// What earlier generations with the same drafter learnt, for the cost-aware policy to start
    /// from and to update at the end; `None` starts from the prior and keeps nothing.
    pub policy_memory: Option<Arc<PolicyMemory>>,
}

impl Default for GenerateParams {
    /// 256 greedy hybrid tokens, blocks of up to 8, fixed length.
    fn default() -> Self {
        Self {
            max_tokens: 256,
            mode: Mode::Hybrid,
            block_size: 8,
            sampling: SamplingParams::default(),
            draft_policy: DraftPolicy::Fixed,
            policy_memory: None,
        }
    }
}

impl GenerateParams {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), EngineError> {
        if !(1..=MAX_TOKENS_LIMIT).contains(&self.max_tokens) {
            return Err(EngineError::Invalid(format!(
                "`max_tokens` must be between 1 and {MAX_TOKENS_LIMIT}, got {}",
                self.max_tokens
            )));
        }
        if !(1..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(EngineError::Invalid(format!(
                "`block_size` must be between 1 and {MAX_BLOCK_SIZE}, got {}",
                self.block_size
            )));
        }
        self.sampling.validate().map_err(EngineError::Invalid)?;
        Ok(())
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated tokens (no end-of-generation token).
    pub tokens: Vec<TokenId>,
    /// The verifier's choice behind each token: its probability under the distribution it was picked
    /// from (the softmax when greedy, the processed distribution when sampling) and the greedy tie
    /// margin of the row.
    pub choices: Vec<Choice>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Counters and timings.
    pub stats: Stats,
}

/// Runs one generation. `is_eog` tells end-of-generation tokens; `on_tokens` receives every batch of
/// newly emitted tokens as soon as it is accepted and returns `false` to cancel.
pub fn generate(
    session: &mut dyn VerifierSession,
    mut drafter: Option<&mut dyn Drafter>,
    prompt: &[TokenId],
    params: &GenerateParams,
    is_eog: &dyn Fn(TokenId) -> bool,
    on_tokens: &mut dyn FnMut(&[TokenId]) -> bool,
) -> Result<Generation, EngineError> {
    params.validate()?;
    if params.mode == Mode::Diffusion {
        return Err(EngineError::Invalid("diffusion-only mode has no verifier: use generate_unverified".into()));
    }
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt must not be empty".into()));
    }
    let room = session.room();
    if prompt.len() >= room {
        return Err(EngineError::Invalid(format!(
            "the prompt has {} tokens but the context holds {room} (prompt plus at least one generated token); \
             shorten the prompt or raise --ctx-size",
            prompt.len()
        )));
    }
    let started = Instant::now();
    let mut stats = Stats { prompt_tokens: prompt.len(), ..Stats::default() };
    let mut out = Emitter { tokens: Vec::new(), choices: Vec::new(), stop: None, max_tokens: params.max_tokens };

    session.set_sampling(&params.sampling)?;
    let mut picker = match &params.draft_policy {
        DraftPolicy::CostAware(curve) if params.mode == Mode::Hybrid => {
            stats.cost_curve = curve.costs.clone();
            Some(LengthPicker::new(curve.clone(), params.policy_memory.as_deref()))
        }
        _ => None,
    };
    let first = session.prefill(prompt)?;
    stats.verifier_s += started.elapsed().as_secs_f64();
    stats.ttft_s = stats.verifier_s;
    let mut context = prompt.to_vec();
    let mut previous: Option<PreviousBlock> = None;
    // Hidden states of the tokens in the verifier's cache (the context minus its last token).
    let feature_dim = first.features.len().checked_div(prompt.len()).unwrap_or(0);
    let mut features = first.features;
    let mut pending = first.choices;


    loop {
        let start = out.tokens.len();
        out.push(&pending, is_eog);
        if out.tokens.len() > start && !on_tokens(&out.tokens[start..]) {
            return Err(EngineError::Cancelled);
        }
        if out.stop.is_some() {
            break;
        }
        context.extend(pending.iter().map(|c| c.token));
        // The session holds the context minus its pending token; a round adds the pending token
        // plus the draft.
        let room = session.room();
        if room == 0 {
            out.stop = Some(StopReason::ContextFull);
            break;
        }
        let remaining = params.max_tokens - out.tokens.len();
        let max_len = params.block_size.min(remaining - 1).min(room - 1);

        let wants_draft = picker.as_ref().is_none_or(LengthPicker::wants_draft);
        let mut draft = match (&mut drafter, params.mode) {
            (Some(d), Mode::Hybrid) if max_len > 0 && wants_draft => {
                let t = Instant::now();
                let features = (feature_dim > 0).then_some(Features { data: &features, dim: feature_dim });
                let req = DraftRequest { context: &context, previous: previous.as_ref(), max_len, features };
                let res = d.propose(&req);
                let drafter_s = t.elapsed().as_secs_f64();
                stats.drafter_s += drafter_s;
                let mut draft = match res {
                    Ok(draft) => draft,
                    Err(e) => {
                        // Debug only: `FallbackDrafter` warns once per outage, not once per round.
                        tracing::debug!(error = %e, "no draft; taking an AR step");
                        stats.drafter_failures += 1;
                        Draft::default()
                    }
                };
                draft.truncate(max_len);
                stats.offered_lengths.push(draft.tokens.len());
                if let Some(p) = picker.as_mut() {
                    let k = p.choose(&draft.confidences, draft.tokens.len(), drafter_s);
                    draft.truncate(k);
                }
                draft
            }
            _ => {
                stats.offered_lengths.push(0);
                Draft::default()
            }
        };
        // A draft that reports no distribution anywhere is deterministic: plain `verify` says so.
        if draft.dists.iter().all(Vec::is_empty) {
            draft.dists.clear();
        }

        let t = Instant::now();
        stats.rounds += 1;
        stats.draft_lengths.push(draft.tokens.len());
        if draft.tokens.is_empty() {
            let verdict = session.step()?;
            let seconds = t.elapsed().as_secs_f64();
            features.extend_from_slice(&verdict.features);
            pending = verdict.choices;
            stats.accepted_lengths.push(0);
            previous = None;
            if let Some(p) = picker.as_mut() {
                p.observe(&[], 0, 0);
                p.observe_call(verdict.batch, 0, 0, seconds);
            }
            stats.batch_blocks += verdict.batch.blocks.max(1);
        } else {
            let verdict = if draft.dists.is_empty() {
                session.verify(&draft.tokens)?
            } else {
                session.verify_with(&draft.tokens, &draft.dists)?
            };
            let seconds = t.elapsed().as_secs_f64();
            if let Some(p) = picker.as_mut() {
                p.observe(&draft.confidences, draft.tokens.len(), verdict.accepted);
                p.observe_call(verdict.batch, draft.tokens.len(), verdict.accepted, seconds);
            }
            stats.batch_blocks += verdict.batch.blocks.max(1);
            features.extend_from_slice(&verdict.features);
            stats.drafted += draft.tokens.len();
            stats.accepted += verdict.accepted;
            stats.accepted_lengths.push(verdict.accepted);
            previous = Some(PreviousBlock {
                draft: draft.tokens.clone(),
                accepted: verdict.accepted,
                correction: verdict.next.token,
            });
            // The accepted drafts are the verifier's own choices at those positions.
            pending = verdict.choices;
        }
        let seconds = t.elapsed().as_secs_f64();
        stats.verifier_s += seconds;
        stats.round_s.push(seconds);
    }

    if let Some(p) = &picker {
        stats.cost_scale = Some(p.cost_scale());
        if let Some(memory) = &params.policy_memory {
            p.remember(memory);
        }
    }
    stats.finish(started.elapsed().as_secs_f64(), out.tokens.len());
    let stop = out.stop.unwrap_or(StopReason::MaxTokens);
    Ok(Generation { tokens: out.tokens, choices: out.choices, stop, stats })
}

/// Collects emitted tokens and applies the stop rules.
struct Emitter {
    tokens: Vec<TokenId>,
    choices: Vec<Choice>,
    stop: Option<StopReason>,
    max_tokens: usize,
}

impl Emitter {
    fn push(&mut self, choices: &[Choice], is_eog: &dyn Fn(TokenId) -> bool) {
        for c in choices {
            if is_eog(c.token) {
                self.stop = Some(StopReason::Eos);
                return;
            }
            self.tokens.push(c.token);
            self.choices.push(*c);
            if self.tokens.len() >= self.max_tokens {
                self.stop = Some(StopReason::MaxTokens);
                return;
            }
        }
    }
}
