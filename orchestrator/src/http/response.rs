//! OpenAI response bodies and stream chunks.

use serde::Serialize;

use crate::drafters::DrafterKind;
use crate::engine::Mode;
use crate::service::{FinishReason, Finished, Usage};

/// OpenAI's `finish_reason`.
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::StopSequence => "stop",
        FinishReason::MaxTokens | FinishReason::ContextFull => "length",
    }
}

/// OpenAI's `usage`, with the draft statistics in `completion_tokens_details`.
#[derive(Debug, Serialize)]
pub struct UsageBody {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Debug, Serialize)]
struct PromptDetails {
    cached_tokens: usize,
}

#[derive(Debug, Serialize)]
struct CompletionDetails {
    /// Draft tokens the verifier accepted.
    accepted_prediction_tokens: usize,
    /// Draft tokens the verifier rejected.
    rejected_prediction_tokens: usize,
    reasoning_tokens: usize,
    audio_tokens: usize,
}

impl From<&Usage> for UsageBody {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: PromptDetails { cached_tokens: 0 },
            completion_tokens_details: CompletionDetails {
                accepted_prediction_tokens: u.accepted_tokens,
                rejected_prediction_tokens: u.rejected_tokens(),
                reasoning_tokens: 0,
                audio_tokens: 0,
            },
        }
    }
}

/// Duet's own statistics, an extra `duet` object next to `usage` (OpenAI clients ignore it).
#[derive(Debug, Serialize)]
pub struct DuetStats {
    mode: Mode,
    drafter: Option<DrafterKind>,
    block_size: usize,
    rounds: usize,
    drafted_tokens: usize,
    accepted_tokens: usize,
    mean_accepted_length: f64,
    ttft_s: f64,
    wall_s: f64,
    tokens_per_s: f64,
    drafter_s: f64,
    verifier_s: f64,
}

/// How the request was run.
#[derive(Debug, Clone, Copy)]
pub struct RunInfo {
    /// The mode used.
    pub mode: Mode,
    /// The drafter used (none in `ar` mode).
    pub drafter: Option<DrafterKind>,
    /// The block size used.
    pub block_size: usize,
}

impl DuetStats {
    /// The statistics of a finished generation.
    pub fn new(run: RunInfo, f: &Finished) -> Self {
        let s = &f.stats;
        Self {
            mode: run.mode,
            drafter: run.drafter,
            block_size: run.block_size,
            rounds: s.rounds,
            drafted_tokens: f.usage.drafted_tokens,
            accepted_tokens: f.usage.accepted_tokens,
            mean_accepted_length: s.mean_accepted_length,
            ttft_s: s.ttft_s,
            wall_s: s.wall_s,
            tokens_per_s: s.tokens_per_s,
            drafter_s: s.drafter_s,
            verifier_s: s.verifier_s,
        }
    }
}

/// `/v1/completions` answer.
#[derive(Debug, Serialize)]
pub struct CompletionBody<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<TextChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duet: Option<DuetStats>,
    pub system_fingerprint: Option<&'a str>,
}

/// One choice of a completion (or one chunk of it).
#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    pub index: usize,
    pub text: &'a str,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

/// `/v1/chat/completions` answer.
#[derive(Debug, Serialize)]
pub struct ChatBody<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChoice<'a>>,
    pub usage: UsageBody,
    pub duet: DuetStats,
    pub system_fingerprint: Option<&'a str>,
}

/// One choice of a chat answer.
#[derive(Debug, Serialize)]
pub struct ChatChoice<'a> {
    pub index: usize,
    pub message: AssistantMessage<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    pub refusal: Option<()>,
}

/// One chunk of a streamed chat answer.
#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    /// `null` on every chunk but the last one when `stream_options.include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duet: Option<DuetStats>,
    pub system_fingerprint: Option<&'a str>,
}

/// The choice of a chat chunk.
#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: usize,
    pub delta: Delta<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

/// What a chat chunk adds.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

/// One chunk of a streamed completion.
#[derive(Debug, Serialize)]
pub struct CompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<TextChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duet: Option<DuetStats>,
    pub system_fingerprint: Option<&'a str>,
}

/// `/v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelCard<'a>>,
}

/// One model.
#[derive(Debug, Serialize)]
pub struct ModelCard<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}
