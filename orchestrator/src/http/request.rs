//! OpenAI request bodies → service requests. Every field that would change the result and that
//! Duet cannot honour is refused with a 400 naming it; unknown fields are refused too, so nothing is
//! silently ignored.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::drafters::DrafterKind;
use crate::engine::{MAX_BLOCK_SIZE, MAX_TOKENS_LIMIT, Mode};
use crate::service::{GenerationRequest, Prompt, Sampling};
use duet_verifier::ChatMessage;

use super::error::ApiError;

/// OpenAI's default `max_tokens` of `/v1/completions`.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// A parsed request and how to answer it.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// What to generate.
    pub request: GenerationRequest,
    /// The `model` the client named, if any.
    pub model: Option<String>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Add a usage chunk at the end of the stream.
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    stop: Option<Value>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<Map<String, Value>>,
    seed: Option<i64>,
    mode: Option<String>,
    drafter: Option<String>,
    block_size: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct CompletionOnly {
    prompt: Value,
    suffix: Option<String>,
    logprobs: Option<i64>,
    echo: Option<bool>,
    best_of: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ChatOnly {
    messages: Vec<Map<String, Value>>,
    max_completion_tokens: Option<i64>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    tools: Option<Vec<Value>>,
    functions: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    modalities: Option<Vec<String>>,
    audio: Option<Value>,
    prediction: Option<Value>,
    reasoning_effort: Option<Value>,
}

/// Fields of both endpoints, including those accepted without effect on the output (`user`,
/// `store`, `metadata`, `service_tier`, `parallel_tool_calls`).
const COMMON_FIELDS: &[&str] = &[
    "model", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "seed", "user", "mode", "drafter", "block_size",
];
const COMPLETION_FIELDS: &[&str] = &["prompt", "suffix", "logprobs", "echo", "best_of"];
const CHAT_FIELDS: &[&str] = &[
    "messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "functions", "tool_choice",
    "function_call", "response_format", "modalities", "audio", "prediction", "reasoning_effort", "store",
    "metadata", "service_tier", "parallel_tool_calls",
];

/// Parses a `/v1/completions` body.
pub fn completion(body: &[u8]) -> Result<Parsed, ApiError> {
    let object = object(body, &[COMMON_FIELDS, COMPLETION_FIELDS], &["prompt"])?;
    let common: Common = typed(&object)?;
    let only: CompletionOnly = typed(&object)?;
    if let Some(n) = only.logprobs {
        return Err(ApiError::invalid(format!("`logprobs` is not supported (got {n}); leave it out or send null")));
    }
    if only.echo == Some(true) {
        return Err(ApiError::invalid("`echo` is not supported; leave it out or send false"));
    }
    if let Some(b) = only.best_of.filter(|&b| b != 1) {
        return Err(ApiError::invalid(format!("`best_of` must be 1: Duet returns one choice per request, got {b}")));
    }
    let text = match only.prompt {
        Value::String(s) => s,
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            items.into_iter().next().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        }
        Value::Array(items) if items.iter().all(Value::is_string) => {
            return Err(ApiError::invalid(format!(
                "`prompt` holds {} prompts; Duet answers one prompt per request",
                items.len()
            )));
        }
        _ => return Err(ApiError::invalid("`prompt` must be a string (token-id prompts are not supported)")),
    };
    let prompt = match only.suffix {
        Some(suffix) => Prompt::Infill { prefix: text, suffix },
        None => Prompt::Text(text),
    };
    let max_tokens = Some(limit("max_tokens", common.max_tokens)?.unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS));
    finish(prompt, max_tokens, common)
}

/// Parses a `/v1/chat/completions` body.
pub fn chat(body: &[u8]) -> Result<Parsed, ApiError> {
    let object = object(body, &[COMMON_FIELDS, CHAT_FIELDS], &["messages"])?;
    let common: Common = typed(&object)?;
    let only: ChatOnly = typed(&object)?;
    if only.logprobs == Some(true) {
        return Err(ApiError::invalid("`logprobs` is not supported; leave it out or send false"));
    }
    if let Some(n) = only.top_logprobs.filter(|&n| n != 0) {
        return Err(ApiError::invalid(format!("`top_logprobs` is not supported (got {n})")));
    }
    for (field, list) in [("tools", &only.tools), ("functions", &only.functions)] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(ApiError::invalid(format!("`{field}` (tool calling) is not supported")));
        }
    }
    for (field, choice) in [("tool_choice", &only.tool_choice), ("function_call", &only.function_call)] {
        match choice {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(ApiError::invalid(format!("`{field}` is not supported (no tools)"))),
        }
    }
    match &only.response_format {
        None | Some(Value::Null) => {}
        Some(v) if v.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => return Err(ApiError::invalid("`response_format` other than {\"type\": \"text\"} is not supported")),
    }
    if only.modalities.as_ref().is_some_and(|m| m.iter().any(|x| x != "text")) {
        return Err(ApiError::invalid("`modalities` other than [\"text\"] are not supported"));
    }
    for (field, v) in [("audio", &only.audio), ("prediction", &only.prediction), ("reasoning_effort", &only.reasoning_effort)] {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(format!("`{field}` is not supported")));
        }
    }
    let messages = only.messages.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
    let max_tokens = match only.max_completion_tokens {
        Some(_) => limit("max_completion_tokens", only.max_completion_tokens)?,
        None => limit("max_tokens", common.max_tokens)?,
    };
    finish(Prompt::Chat(messages), max_tokens, common)
}

/// The body as a JSON object with only known fields and the required ones present.
fn object(body: &[u8], known: &[&[&str]], required: &[&str]) -> Result<Map<String, Value>, ApiError> {
    // JSON is UTF-8 (RFC 8259); say so plainly rather than as a parse error at some column.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::invalid(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {}); send UTF-8 JSON",
            e.valid_up_to()
        )));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::unprocessable(format!("the request body: {e}")),
        _ => ApiError::invalid(format!("the request body is not valid JSON: {e}")),
    })?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    if let Some(field) = object.keys().find(|k| !known.iter().any(|list| list.contains(&k.as_str()))) {
        return Err(ApiError::invalid(format!("`{field}` is not a supported field")).with_param(field));
    }
    if let Some(field) = required.iter().find(|f| object.get(**f).is_none_or(Value::is_null)) {
        return Err(ApiError::invalid(format!("`{field}` is required")));
    }
    Ok(object)
}

/// The object's fields as `T` (unknown fields were checked before); a wrong type is a 422 naming the field.
fn typed<T: DeserializeOwned>(object: &Map<String, Value>) -> Result<T, ApiError> {
    let value = Value::Object(object.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::unprocessable(format!("`{path}`: {}", e.inner()))
    })
}

/// A token limit, checked against the engine's range with the field's own name.
fn limit(field: &str, value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(n) if (1..=MAX_TOKENS_LIMIT as i64).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid(format!("`{field}` must be between 1 and {MAX_TOKENS_LIMIT}, got {n}"))),
    }
}

fn message(i: usize, m: &Map<String, Value>) -> Result<ChatMessage, ApiError> {
    const KNOWN: &[&str] = &["role", "content", "name", "refusal", "tool_calls"];
    if let Some(k) = m.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!("`messages[{i}].{k}` is not supported")).with_param(format!("messages[{i}].{k}")));
    }
    if m.get("tool_calls").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()) && !t.is_null()) {
        return Err(ApiError::invalid(format!("`messages[{i}].tool_calls` is not supported (no tool calling)")));
    }
    let role = match m.get("role").and_then(Value::as_str) {
        Some("developer") => "system",
        Some(r @ ("system" | "user" | "assistant")) => r,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "`messages[{i}].role` must be system, developer, user or assistant, got `{other}`"
            )));
        }
        None => return Err(ApiError::invalid(format!("`messages[{i}].role` is required"))),
    };
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "`messages[{i}].content[{j}]` must be a text part ({{\"type\": \"text\", \"text\": ...}})"
                        )));
                    }
                }
            }
            text
        }
        Some(_) => return Err(ApiError::invalid(format!("`messages[{i}].content` must be a string or an array of text parts"))),
    };
    Ok(ChatMessage { role: role.to_owned(), content })
}

/// The fields both endpoints share, checked, into a service request.
fn finish(prompt: Prompt, max_tokens: Option<usize>, c: Common) -> Result<Parsed, ApiError> {
    if let Some(n) = c.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(format!("`n` must be 1: Duet returns one choice per request, got {n}")));
    }
    for (field, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if let Some(x) = v.filter(|&x| x != 0.0) {
            return Err(ApiError::invalid(format!("`{field}` is not supported (got {x}); send 0 or leave it out")));
        }
    }
    if c.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::invalid("`logit_bias` is not supported"));
    }
    let stop = match c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid("`stop` must be a string or an array of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("`stop` must be a string or an array of strings")),
    };
    let mode = match c.mode.as_deref() {
        None => None,
        Some("ar") => Some(Mode::Ar),
        Some("hybrid") => Some(Mode::Hybrid),
        Some("diffusion") => Some(Mode::Diffusion),
        Some(other) => return Err(ApiError::invalid(format!("`mode` must be ar, hybrid or diffusion, got `{other}`"))),
    };
    let drafter = match c.drafter.as_deref() {
        None => None,
        Some("diffusion") => Some(DrafterKind::Diffusion),
        Some("ngram") => Some(DrafterKind::Ngram),
        Some("ar-model") => Some(DrafterKind::ArModel),
        Some(other) => {
            return Err(ApiError::invalid(format!("`drafter` must be diffusion, ngram or ar-model, got `{other}`")));
        }
    };
    let block_size = match c.block_size {
        None => None,
        Some(k) if (1..=MAX_BLOCK_SIZE as i64).contains(&k) => Some(k as usize),
        Some(k) => return Err(ApiError::invalid(format!("`block_size` must be between 1 and {MAX_BLOCK_SIZE}, got {k}"))),
    };
    let seed = match c.seed {
        Some(s) if s < 0 => return Err(ApiError::invalid(format!("`seed` must be between 0 and {}, got {s}", i64::MAX))),
        s => s.map(|s| s as u64),
    };
    let request = GenerationRequest {
        prompt,
        max_tokens,
        mode,
        drafter,
        block_size,
        stop,
        sampling: Sampling { temperature: c.temperature, top_p: c.top_p, top_k: c.top_k, seed },
        timeout: None,
    };
    request.validate()?;
    Ok(Parsed {
        request,
        model: c.model,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}
