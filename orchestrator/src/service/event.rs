//! What a generation reports to its caller, in order: `Started`, any number of `Delta`s, then exactly
//! one `Finished` or `Error`.

use duet_verifier::TokenId;

use crate::engine::Stats;

use super::ServiceError;

/// One step of a generation's progress.
#[derive(Debug, Clone)]
pub enum Event {
    /// The request left the queue, its prompt is tokenized and fits: tokens follow.
    Started {
        /// Tokens in the prompt (after the chat or infill template).
        prompt_tokens: usize,
    },
    /// Newly accepted tokens and the text that became final with them. Text can lag the tokens: bytes
    /// that may still turn into a stop string or that end inside a UTF-8 character are held back, so
    /// `text` may be empty; the concatenated texts are the whole output.
    Delta {
        /// The text released by this step.
        text: String,
        /// The tokens accepted in this step (up to the one that completed a stop string).
        tokens: Vec<TokenId>,
    },
    /// The generation ended normally (boxed: its statistics are large beside the other events).
    Finished(Box<Finished>),
    /// The generation failed; nothing follows.
    Error(ServiceError),
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Why it stopped.
    pub reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// The engine's counters and timings.
    pub stats: Stats,
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// The output reached one of the request's stop strings (cut before it).
    StopSequence,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The session's context is full.
    ContextFull,
}

/// Token counts of one generation, as OpenAI's `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (up to and including the token that completed a stop string; the
    /// end-of-generation token not counted).
    pub completion_tokens: usize,
    /// Draft tokens sent to the verifier.
    pub drafted_tokens: usize,
    /// Draft tokens the verifier accepted.
    pub accepted_tokens: usize,
}

impl Usage {
    /// Draft tokens the verifier rejected.
    pub fn rejected_tokens(&self) -> usize {
        self.drafted_tokens.saturating_sub(self.accepted_tokens)
    }

    /// Prompt plus completion.
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}
