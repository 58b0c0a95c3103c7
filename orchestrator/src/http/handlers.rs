//! The route handlers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::engine::Mode;
use crate::service::{Event, GenerationService};

use super::request::{self, Parsed};
use super::response::{
    AssistantMessage, ChatBody, ChatChoice, CompletionBody, DuetStats, ModelCard, ModelList, RunInfo, TextChoice,
    UsageBody, finish_reason,
};
use super::stream::{self, StreamMeta};
use super::{ApiError, AppState};

/// Which endpoint a generation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

pub async fn models(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let svc = state.service()?;
    let list = ModelList { object: "list", data: vec![card(&state, svc)] };
    Ok(Json(serde_json::to_value(list).map_err(|e| ApiError::internal(e.to_string()))?))
}

pub async fn model(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let svc = state.service()?;
    if id != svc.model_name() {
        return Err(unknown_model(&id));
    }
    Ok(Json(serde_json::to_value(card(&state, svc)).map_err(|e| ApiError::internal(e.to_string()))?))
}

fn card<'a>(state: &AppState, svc: &'a GenerationService) -> ModelCard<'a> {
    ModelCard { id: svc.model_name(), object: "model", created: state.inner.created, owned_by: "duet" }
}

fn unknown_model(name: &str) -> ApiError {
    ApiError::not_found(format!("the model `{name}` does not exist; GET /v1/models lists the served model"), "model_not_found")
}

pub async fn completions(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(state, body, Endpoint::Completions).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn chat(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(state, body, Endpoint::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

async fn generate(state: AppState, body: Result<Bytes, BytesRejection>, endpoint: Endpoint) -> Result<Response, ApiError> {
    let svc = state.service()?.clone();
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.inner.max_body_bytes),
        _ => ApiError::invalid(format!("cannot read the request body: {e}")),
    })?;
    let parsed: Parsed = match endpoint {
        Endpoint::Completions => request::completion(&body)?,
        Endpoint::Chat => request::chat(&body)?,
    };
    if let Some(model) = parsed.model.as_deref().filter(|m| *m != svc.model_name()) {
        return Err(unknown_model(model));
    }
    let cfg = svc.config();
    let mode = parsed.request.mode.unwrap_or(cfg.mode);
    let run = RunInfo {
        mode,
        drafter: match mode {
            Mode::Ar => None,
            Mode::Hybrid => Some(parsed.request.drafter.unwrap_or(cfg.drafter)),
            Mode::Diffusion => Some(crate::drafters::DrafterKind::Diffusion),
        },
        block_size: parsed.request.block_size.unwrap_or(cfg.block_size),
    };
    let mut events = svc.submit(parsed.request)?;
    // The first event tells whether the prompt fits: errors found before any token keep their status.
    match events.next_event().await {
        Some(Event::Started { .. }) => {}
        Some(Event::Error(e)) => return Err(e.into()),
        other => return Err(ApiError::internal(format!("the generation started oddly: {other:?}"))),
    }
    let meta = StreamMeta {
        id: new_id(endpoint),
        created: now(),
        model: svc.model_name().to_owned(),
        endpoint,
        include_usage: parsed.include_usage,
        run,
    };
    if parsed.stream {
        return Ok(stream::sse(meta, events).into_response());
    }
    let done = events.collect().await?;
    let reason = finish_reason(done.finished.reason);
    let usage = UsageBody::from(&done.finished.usage);
    let duet = DuetStats::new(run, &done.finished);
    let body = match endpoint {
        Endpoint::Completions => serde_json::to_value(CompletionBody {
            id: &meta.id,
            object: "text_completion",
            created: meta.created,
            model: &meta.model,
            choices: vec![TextChoice { index: 0, text: &done.text, logprobs: None, finish_reason: Some(reason) }],
            usage: Some(usage),
            duet: Some(duet),
            system_fingerprint: None,
        }),
        Endpoint::Chat => serde_json::to_value(ChatBody {
            id: &meta.id,
            object: "chat.completion",
            created: meta.created,
            model: &meta.model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage { role: "assistant", content: &done.text, refusal: None },
                logprobs: None,
                finish_reason: reason,
            }],
            usage,
            duet,
            system_fingerprint: None,
        }),
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(body).into_response())
}

/// A unique id: `cmpl-…` or `chatcmpl-…`.
fn new_id(endpoint: Endpoint) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    let prefix = match endpoint {
        Endpoint::Completions => "cmpl",
        Endpoint::Chat => "chatcmpl",
    };
    format!("{prefix}-{nanos:016x}{n:06x}")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

pub async fn health(State(state): State<AppState>) -> Response {
    match state.service() {
        Ok(svc) if svc.available().is_err() => {
            let reason = svc.available().err().unwrap_or_default();
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "unavailable", "reason": reason })))
                .into_response()
        }
        Ok(svc) => {
            let load = svc.load();
            Json(serde_json::json!({
                "status": "ok",
                "model": svc.model_name(),
                "running": load.running,
                "queued": load.queued,
            }))
            .into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "loading" }))).into_response(),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    match &state.inner.prometheus {
        Some(handle) => {
            if let Ok(svc) = state.service().cloned() {
                // The verifier answers between decodes: off the async workers.
                let _ = tokio::task::spawn_blocking(move || svc.verifier_usage()).await;
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
        }
        None => ApiError::not_found("metrics are not enabled on this server", "not_found").into_response(),
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()), "not_found")
}
