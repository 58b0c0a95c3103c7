//! Streamed answers: server-sent events in OpenAI's chunk format, the same id on every chunk,
//! `data: [DONE]` at the end; an error after the first chunk is an `error` event that ends the
//! stream. Dropping the response (the client went away) drops the generation stream, which cancels
//! the generation.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::StreamExt as _;
use futures_util::stream::{self, Stream};
use serde::Serialize;

use crate::service::{Event, Finished, GenerationStream};

use super::ApiError;
use super::handlers::Endpoint;
use super::response::{
    ChatChunk, ChunkChoice, CompletionChunk, Delta, DuetStats, RunInfo, TextChoice, UsageBody, finish_reason,
};

/// What every chunk of one answer repeats.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
    pub include_usage: bool,
    pub run: RunInfo,
}

struct State {
    events: GenerationStream,
    meta: StreamMeta,
    opened: bool,
    done: bool,
}

/// The SSE response for a started generation.
pub fn sse(meta: StreamMeta, events: GenerationStream) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let state = State { events, meta, opened: false, done: false };
    let chunks = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.opened {
            st.opened = true;
            // A chat stream opens with the assistant's role.
            let first = match st.meta.endpoint {
                Endpoint::Chat => vec![st.meta.chat_chunk(Delta { role: Some("assistant"), content: Some("") }, None, None)],
                Endpoint::Completions => vec![],
            };
            return Some((first, st));
        }
        let out = match st.events.next_event().await {
            Some(Event::Started { .. }) => vec![],
            Some(Event::Delta { text, .. }) if text.is_empty() => vec![],
            Some(Event::Delta { text, .. }) => vec![st.meta.text_chunk(&text, None, None)],
            Some(Event::Finished(f)) => {
                st.done = true;
                st.meta.finish(&f)
            }
            Some(Event::Error(e)) => {
                st.done = true;
                vec![error_event(&ApiError::from(e))]
            }
            None => {
                st.done = true;
                vec![error_event(&ApiError::internal("the generation ended without a result"))]
            }
        };
        Some((out, st))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(chunks).keep_alive(KeepAlive::default())
}

fn json_event(value: &impl Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")))
}

fn error_event(e: &ApiError) -> SseEvent {
    json_event(&e.body()).event("error")
}

impl StreamMeta {
    fn usage_field(&self) -> Option<Option<UsageBody>> {
        self.include_usage.then_some(None)
    }

    fn chat_chunk(&self, delta: Delta<'_>, finish: Option<&'static str>, duet: Option<DuetStats>) -> SseEvent {
        json_event(&ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason: finish }],
            usage: self.usage_field(),
            duet,
            system_fingerprint: None,
        })
    }

    /// A chunk carrying text (or, with `finish`, the last one of the choice).
    fn text_chunk(&self, text: &str, finish: Option<&'static str>, duet: Option<DuetStats>) -> SseEvent {
        match self.endpoint {
            Endpoint::Chat => {
                let delta = if finish.is_some() { Delta::default() } else { Delta { role: None, content: Some(text) } };
                self.chat_chunk(delta, finish, duet)
            }
            Endpoint::Completions => json_event(&CompletionChunk {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: vec![TextChoice { index: 0, text, logprobs: None, finish_reason: finish }],
                usage: self.usage_field(),
                duet,
                system_fingerprint: None,
            }),
        }
    }

    /// The finishing chunk, the usage chunk when asked for, and `[DONE]`.
    fn finish(&self, f: &Finished) -> Vec<SseEvent> {
        let mut out = vec![self.text_chunk("", Some(finish_reason(f.reason)), Some(DuetStats::new(self.run, f)))];
        if self.include_usage {
            let usage = Some(Some(UsageBody::from(&f.usage)));
            out.push(match self.endpoint {
                Endpoint::Chat => json_event(&ChatChunk {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.model,
                    choices: vec![],
                    usage,
                    duet: None,
                    system_fingerprint: None,
                }),
                Endpoint::Completions => json_event(&CompletionChunk {
                    id: &self.id,
                    object: "text_completion",
                    created: self.created,
                    model: &self.model,
                    choices: vec![],
                    usage,
                    duet: None,
                    system_fingerprint: None,
                }),
            });
        }
        out.push(SseEvent::default().data("[DONE]"));
        out
    }
}
