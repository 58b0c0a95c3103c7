//! The routes through the router without a socket, on the scripted backend.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::service::testing::{Gate, ScriptedBackend};
use crate::service::{GenerationRequest, GenerationService, Prompt, ServiceConfig};

const SCRIPT: &str = "fn main() {\n    println!(\"hi\");\n}\n\nfn other() {}\n";
const MODEL: &str = "scripted-0.5b";

fn service(backend: ScriptedBackend, max_running: usize, max_queued: usize) -> GenerationService {
    let cfg = ServiceConfig { max_running, max_queued, ..ServiceConfig::default() };
    GenerationService::start(Arc::new(backend), cfg).expect("service")
}

fn app_with(backend: ScriptedBackend, keys: &[&str], max_running: usize, max_queued: usize) -> Router {
    let state = AppState::new(keys.iter().map(|k| k.to_string()).collect(), metrics::prometheus().ok(), 4096);
    state.set_service(service(backend, max_running, max_queued));
    router(state)
}

fn app() -> Router {
    app_with(ScriptedBackend::new(MODEL, SCRIPT, 256), &[], 2, 4)
}

struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The error message of an OpenAI error body.
    fn error(&self) -> String {
        let v = self.json();
        assert!(v["error"]["type"].is_string(), "{v}");
        v["error"]["message"].as_str().unwrap_or_default().to_owned()
    }

    /// Server-sent events as (event name, data).
    fn events(&self) -> Vec<(Option<String>, String)> {
        self.body
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .filter_map(|e| {
                let mut name = None;
                let mut data = None;
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(d.to_owned());
                    }
                }
                data.map(|d| (name, d))
            })
            .collect()
    }
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>, key: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
    let response = app.clone().oneshot(req.body(body).expect("request")).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("body");
    Answer { status, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn post(app: &Router, uri: &str, body: Value) -> Answer {
    call(app, "POST", uri, Some(body), None).await
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let a = call(&app(), "GET", "/v1/models", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(call(&app(), "GET", &format!("/v1/models/{MODEL}"), None, None).await.status, StatusCode::OK);
    assert_eq!(call(&app(), "GET", "/v1/models/gpt-4", None, None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_and_generation_answer_503_until_the_models_load() {
    let state = AppState::new(vec![], None, 4096);
    let app = router(state.clone());
    assert_eq!(call(&app, "GET", "/health", None, None).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let a = post(&app, "/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.error().contains("still loading"));
    state.set_service(service(ScriptedBackend::new(MODEL, SCRIPT, 256), 1, 1));
    assert_eq!(call(&app, "GET", "/health", None, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_completion_returns_text_usage_and_draft_statistics() {
    let a = post(&app(), "/v1/completions", json!({"model": MODEL, "prompt": "// a", "max_tokens": 200})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")));
    assert_eq!(v["choices"][0]["text"], SCRIPT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 4);
    assert_eq!(u["completion_tokens"], SCRIPT.len());
    assert_eq!(u["total_tokens"], 4 + SCRIPT.len());
    let d = &u["completion_tokens_details"];
    let (acc, rej) = (d["accepted_prediction_tokens"].as_u64(), d["rejected_prediction_tokens"].as_u64());
    assert_eq!(acc.zip(rej).map(|(a, r)| a + r), v["duet"]["drafted_tokens"].as_u64());
    assert_eq!(v["duet"]["mode"], "hybrid");
}

#[tokio::test]
async fn completions_default_to_sixteen_tokens_like_openai() {
    let v = post(&app(), "/v1/completions", json!({"prompt": "x"})).await.json();
    assert_eq!(v["choices"][0]["text"], &SCRIPT[..COMPLETIONS_DEFAULT_MAX_TOKENS]);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn a_chat_completion_returns_the_assistant_message() {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 12});
    let v = post(&app(), "/v1/chat/completions", body).await.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], &SCRIPT[..12]);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // "<user>hi\n<assistant>" in the scripted template.
    assert_eq!(v["usage"]["prompt_tokens"], 20);
}

#[tokio::test]
async fn a_streamed_chat_has_one_id_role_deltas_finish_usage_and_done() {
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true,
                      "stream_options": {"include_usage": true}, "mode": "ar"});
    let a = post(&app(), "/v1/chat/completions", body).await;
    assert_eq!(a.status, StatusCode::OK);
    let events = a.events();
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).expect("json")).collect();
    let id = chunks[0]["id"].clone();
    assert!(chunks.iter().all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, SCRIPT);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish["usage"].is_null());
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], SCRIPT.len());
    assert_eq!(usage["usage"]["completion_tokens_details"]["accepted_prediction_tokens"], 0);
}

#[tokio::test]
async fn a_streamed_completion_adds_up_to_the_plain_answer() {
    let app = app();
    let plain = post(&app, "/v1/completions", json!({"prompt": "x", "max_tokens": 30, "block_size": 4})).await.json();
    let a = post(&app, "/v1/completions", json!({"prompt": "x", "max_tokens": 30, "block_size": 4, "stream": true})).await;
    let events = a.events();
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).expect("json")).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap_or_default());
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage chunk unless asked");
    assert_eq!(chunks.last().map(|c| c["choices"][0]["finish_reason"].clone()), Some(json!("length")));
}

#[tokio::test]
async fn a_stop_sequence_spanning_tokens_ends_the_text_before_it() {
    let v = post(&app(), "/v1/completions", json!({"prompt": "x", "max_tokens": 100, "stop": ["\n}"]})).await.json();
    assert_eq!(v["choices"][0]["text"], "fn main() {\n    println!(\"hi\");");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn suffix_runs_fill_in_the_middle() {
    let v = post(&app(), "/v1/completions", json!({"prompt": "ab", "suffix": "cd", "max_tokens": 3})).await.json();
    // Three FIM marker tokens around four bytes.
    assert_eq!(v["usage"]["prompt_tokens"], 7);
}

async fn expect_error(body: Value, uri: &str, status: StatusCode, needle: &str) {
    let a = post(&app(), uri, body.clone()).await;
    assert_eq!(a.status, status, "{body} → {}", a.body);
    let msg = a.error();
    assert!(msg.contains(needle), "{body}: expected `{needle}` in `{msg}`");
}

#[tokio::test]
async fn fields_that_would_change_the_result_are_refused_by_name() {
    let c = "/v1/completions";
    let chat = "/v1/chat/completions";
    let m = json!([{"role": "user", "content": "hi"}]);
    expect_error(json!({"prompt": "x", "n": 2}), c, StatusCode::BAD_REQUEST, "`n` must be 1").await;
    expect_error(json!({"prompt": "x", "temperature": 0.7, "mode": "diffusion"}), c, StatusCode::BAD_REQUEST, "`temperature` > 0 needs mode").await;
    expect_error(json!({"messages": m, "top_p": 0.0}), chat, StatusCode::BAD_REQUEST, "`top_p` must be in (0, 1]").await;
    expect_error(json!({"prompt": "x", "seed": -3}), c, StatusCode::BAD_REQUEST, "`seed` must be between 0 and").await;
    expect_error(json!({"prompt": "x", "logprobs": 2}), c, StatusCode::BAD_REQUEST, "`logprobs`").await;
    expect_error(json!({"messages": m, "logprobs": true}), chat, StatusCode::BAD_REQUEST, "`logprobs`").await;
    expect_error(json!({"messages": m, "tools": [{"type": "function"}]}), chat, StatusCode::BAD_REQUEST, "`tools`").await;
    expect_error(json!({"prompt": "x", "presence_penalty": 1.0}), c, StatusCode::BAD_REQUEST, "`presence_penalty`").await;
    expect_error(json!({"prompt": "x", "frobnicate": 1}), c, StatusCode::BAD_REQUEST, "`frobnicate` is not a supported field").await;
    expect_error(json!({"prompt": "x", "mode": "fast"}), c, StatusCode::BAD_REQUEST, "`mode` must be ar, hybrid or diffusion").await;
    expect_error(json!({"prompt": "x", "drafter": "diffusion"}), c, StatusCode::BAD_REQUEST, "not loaded").await;
    expect_error(json!({"prompt": "x", "block_size": 0}), c, StatusCode::BAD_REQUEST, "`block_size` must be between 1 and 256").await;
    expect_error(json!({"prompt": "x", "max_tokens": 0}), c, StatusCode::BAD_REQUEST, "`max_tokens` must be between 1 and 65536").await;
    expect_error(json!({"prompt": ["a", "b"]}), c, StatusCode::BAD_REQUEST, "`prompt` holds 2 prompts").await;
    expect_error(json!({"messages": [{"role": "tool", "content": "x"}]}), chat, StatusCode::BAD_REQUEST, "`messages[0].role`").await;
    expect_error(json!({"max_tokens": 3}), c, StatusCode::BAD_REQUEST, "`prompt` is required").await;
}

#[tokio::test]
async fn greedy_settings_and_harmless_fields_are_accepted() {
    let body = json!({"prompt": "x", "temperature": 0, "top_p": 1, "n": 1, "seed": 5, "user": "me", "max_tokens": 2});
    assert_eq!(post(&app(), "/v1/completions", body).await.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_bodies_get_400_and_wrong_types_422() {
    let app = app();
    let req = Request::builder().method("POST").uri("/v1/completions").body(Body::from("{not json")).expect("req");
    let r = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    expect_error(json!({"prompt": "x", "max_tokens": "ten"}), "/v1/completions", StatusCode::UNPROCESSABLE_ENTITY, "`max_tokens`").await;
}

#[tokio::test]
async fn an_unknown_model_is_404_and_an_unknown_route_too() {
    expect_error(json!({"model": "gpt-4o", "prompt": "x"}), "/v1/completions", StatusCode::NOT_FOUND, "`gpt-4o` does not exist").await;
    let a = call(&app(), "GET", "/v2/nothing", None, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("no route"));
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let a = post(&app(), "/v1/completions", json!({"prompt": "x".repeat(10_000)})).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.error().contains("larger than 4096 bytes"));
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_400_context_length_exceeded() {
    let a = post(&app(), "/v1/completions", json!({"prompt": "y".repeat(300)})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn api_keys_guard_the_v1_routes_only() {
    let app = app_with(ScriptedBackend::new(MODEL, SCRIPT, 256), &["k1", "k2"], 1, 1);
    let missing = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    assert_eq!(call(&app, "GET", "/v1/models", None, Some("nope")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&app, "GET", "/v1/models", None, Some("k2")).await.status, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/health", None, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_busy_server_answers_429() {
    let (backend, gate): (ScriptedBackend, Gate) = ScriptedBackend::new(MODEL, SCRIPT, 256).gated();
    let svc = service(backend, 1, 0);
    let state = AppState::new(vec![], None, 4096);
    state.set_service(svc.clone());
    let app = router(state);
    // Another client holds the only session (waiting at the gate).
    let held = svc.submit(GenerationRequest::new(Prompt::Text("x".into()))).expect("admitted");
    let busy = post(&app, "/v1/completions", json!({"prompt": "x", "max_tokens": 3})).await;
    assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(busy.error().contains("server busy"));
    gate.open();
    assert!(held.collect().await.is_ok());
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_generation() {
    let (backend, gate) = ScriptedBackend::new(MODEL, &"z".repeat(5000), 10_000).gated();
    let svc = service(backend.clone(), 1, 0);
    let state = AppState::new(vec![], None, 4096);
    state.set_service(svc.clone());
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true, "mode": "ar"});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    // The stream has started (headers sent); the client leaves before reading any token.
    let response = router(state).oneshot(req).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    gate.open();
    for _ in 0..1000 {
        if svc.load().running == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(svc.load().running, 0, "the session is released");
    assert_eq!(backend.verifications(), 0, "no token is decoded after the client left");
}

#[tokio::test]
async fn an_error_mid_stream_is_an_error_event_and_the_end() {
    let app = app_with(ScriptedBackend::new(MODEL, SCRIPT, 256).failing_at(5), &[], 1, 1);
    let a = post(&app, "/v1/completions", json!({"prompt": "x", "max_tokens": 50, "stream": true, "mode": "ar"})).await;
    assert_eq!(a.status, StatusCode::OK);
    let events = a.events();
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("error"));
    let v: Value = serde_json::from_str(data).expect("json");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("scripted failure")), "{v}");
    assert!(events.iter().all(|(_, d)| d != "[DONE]"));
    // Without streaming the same failure is a 500.
    let a = post(&app, "/v1/completions", json!({"prompt": "x", "max_tokens": 50, "mode": "ar"})).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn metrics_expose_requests_latencies_and_drafts() {
    let app = app();
    let _ = post(&app, "/v1/completions", json!({"prompt": "x", "max_tokens": 40})).await;
    let a = call(&app, "GET", "/metrics", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    for name in [
        "duet_http_requests_total{route=\"/v1/completions\",status=\"200\"}",
        "duet_time_to_first_token_seconds_bucket",
        "duet_inter_token_latency_seconds_bucket",
        "duet_drafted_tokens_total",
        "duet_accepted_tokens_total",
        "duet_accepted_length_tokens_bucket",
        "duet_draft_length_tokens_bucket",
        "duet_drafter_step_seconds_bucket",
        "duet_verifier_step_seconds_bucket",
        "duet_sessions_in_flight",
    ] {
        assert!(a.body.contains(name), "missing {name} in\n{}", a.body);
    }
}
