//! Diffusion-only decoding: the drafter generates alone, block after block, and nothing checks it —
//! the Gemini-Diffusion-style fast, lossy path, kept to show what verification buys.

use std::time::Instant;

use duet_verifier::{Choice, TokenId};

use super::{DraftRequest, Drafter, EngineError, GenerateParams, Generation, Stats, StopReason};

/// Generates with the drafter alone. Every block is emitted as drafted, up to an end-of-generation
/// token or `max_tokens`; `ctx_size` bounds prompt plus output.
pub fn generate_unverified(
    drafter: &mut dyn Drafter,
    prompt: &[TokenId],
    params: &GenerateParams,
    ctx_size: usize,
    is_eog: &dyn Fn(TokenId) -> bool,
    on_tokens: &mut dyn FnMut(&[TokenId]) -> bool,
) -> Result<Generation, EngineError> {
    params.validate()?;
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt must not be empty".into()));
    }
    if prompt.len() >= ctx_size {
        return Err(EngineError::Invalid(format!(
            "the prompt has {} tokens but the context holds {ctx_size}; shorten the prompt or raise --ctx-size",
            prompt.len()
        )));
    }
    let started = Instant::now();
    let mut stats = Stats { prompt_tokens: prompt.len(), ..Stats::default() };
    let mut context = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut choices = Vec::new();
    let stop = loop {
        if tokens.len() >= params.max_tokens {
            break StopReason::MaxTokens;
        }
        let max_len = params.block_size.min(params.max_tokens - tokens.len()).min(ctx_size - context.len());
        if max_len == 0 {
            break StopReason::ContextFull;
        }
        let t = Instant::now();
        let draft = drafter
            .propose(&DraftRequest { context: &context, previous: None, max_len, features: None })
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        stats.drafter_s += t.elapsed().as_secs_f64();
        if stats.rounds == 0 {
            stats.ttft_s = started.elapsed().as_secs_f64();
        }
        stats.rounds += 1;
        stats.draft_lengths.push(draft.tokens.len());
        if draft.tokens.is_empty() {
            return Err(EngineError::Invalid(format!("drafter {} proposed nothing", drafter.name())));
        }
        let end = draft.tokens.iter().position(|&t| is_eog(t));
        let emit = &draft.tokens[..end.unwrap_or(draft.tokens.len())];
        stats.drafted += draft.tokens.len();
        tokens.extend_from_slice(emit);
        choices.extend(draft.probs[..emit.len()].iter().zip(emit).map(|(&prob, &token)| Choice {
            token,
            prob,
            margin: f32::NAN,
        }));
        context.extend_from_slice(emit);
        if !emit.is_empty() && !on_tokens(emit) {
            return Err(EngineError::Cancelled);
        }
        if end.is_some() {
            break StopReason::Eos;
        }
    };
    let wall = started.elapsed().as_secs_f64();
    stats.finish(wall, tokens.len());
    // No verification: every round's tokens are the block itself.
    stats.mean_accepted_length = if stats.rounds > 0 { tokens.len() as f64 / stats.rounds as f64 } else { 0.0 };
    Ok(Generation { tokens, choices, stop, stats })
}
