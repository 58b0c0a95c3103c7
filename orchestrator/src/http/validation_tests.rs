//! Bad input through the whole router (issue 9): every refusal is a 4xx in OpenAI's error shape whose
//! `param` names the field and whose message names the limit; nothing a client sends reaches a 5xx
//! or a panic.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::service::testing::ScriptedBackend;
use crate::service::{GenerationService, ServiceConfig};

const MODEL: &str = "scripted-0.5b";
const LIMIT: usize = 4096;

fn app() -> Router {
    let cfg = ServiceConfig { max_running: 2, max_queued: 64, ..ServiceConfig::default() };
    let backend = ScriptedBackend::new(MODEL, "fn main() {}\n", 256);
    let state = AppState::new(vec![], None, LIMIT);
    state.set_service(GenerationService::start(Arc::new(backend), cfg).expect("service"));
    router(state)
}

async fn send(app: &Router, uri: &str, body: Body) -> (StatusCode, Value) {
    let req = Request::builder().method("POST").uri(uri).header("content-type", "application/json").body(body).expect("request");
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

/// Posts `body` and checks the refusal: status, `param`, and a piece of the message.
async fn refused(app: &Router, uri: &str, body: Value, status: StatusCode, param: Option<&str>, needle: &str) {
    let (got, v) = send(app, uri, Body::from(body.to_string())).await;
    assert_eq!(got, status, "{body} → {v}");
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    assert_eq!(e["param"].as_str(), param, "{body} → {v}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{body}: expected `{needle}` in `{msg}`");
}

#[tokio::test]
async fn an_invalid_utf8_body_is_400_naming_the_body() {
    let app = app();
    for uri in ["/v1/completions", "/v1/chat/completions"] {
        let body = b"{\"prompt\": \"caf\xc3\", \"max_tokens\": 2}".to_vec();
        let (status, v) = send(&app, uri, Body::from(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with("the request body is not valid UTF-8 (invalid byte at offset 15)"), "{msg}");
        assert_eq!(v["error"]["param"], Value::Null);
    }
}

#[tokio::test]
async fn every_refusal_names_the_field_in_param_and_the_limit_in_the_message() {
    let app = app();
    let c = "/v1/completions";
    let chat = "/v1/chat/completions";
    let m = json!([{"role": "user", "content": "hi"}]);
    let bad = StatusCode::BAD_REQUEST;
    let wrong_type = StatusCode::UNPROCESSABLE_ENTITY;
    // Ranges: the message carries the limit.
    refused(&app, c, json!({"prompt": "x", "max_tokens": 65537}), bad, Some("max_tokens"), "between 1 and 65536, got 65537").await;
    refused(&app, c, json!({"prompt": "x", "max_tokens": -1}), bad, Some("max_tokens"), "between 1 and 65536, got -1").await;
    refused(&app, chat, json!({"messages": m, "max_completion_tokens": 0}), bad, Some("max_completion_tokens"), "between 1 and 65536").await;
    refused(&app, c, json!({"prompt": "x", "block_size": 257}), bad, Some("block_size"), "between 1 and 256, got 257").await;
    refused(&app, c, json!({"prompt": "x", "temperature": 2.5}), bad, Some("temperature"), "between 0 and 2, got 2.5").await;
    refused(&app, c, json!({"prompt": "x", "temperature": -0.1}), bad, Some("temperature"), "between 0 and 2").await;
    refused(&app, c, json!({"prompt": "x", "top_p": 0}), bad, Some("top_p"), "must be in (0, 1], got 0").await;
    refused(&app, c, json!({"prompt": "x", "top_p": 1.5}), bad, Some("top_p"), "must be in (0, 1]").await;
    refused(&app, c, json!({"prompt": "x", "n": 0}), bad, Some("n"), "`n` must be 1").await;
    refused(&app, c, json!({"prompt": "x", "best_of": 3}), bad, Some("best_of"), "must be 1").await;
    refused(&app, c, json!({"prompt": "x", "stop": vec!["s"; 17]}), bad, Some("stop"), "at most 16 strings, got 17").await;
    refused(&app, c, json!({"prompt": "x", "stop": "s".repeat(257)}), bad, Some("stop"), "at most 256 bytes").await;
    refused(&app, c, json!({"prompt": "x", "stop": [1]}), bad, Some("stop"), "string or an array of strings").await;
    refused(&app, c, json!({"prompt": ""}), bad, Some("prompt"), "must not be empty").await;
    refused(&app, chat, json!({"messages": []}), bad, Some("messages"), "must not be empty").await;
    refused(&app, chat, json!({"messages": [{"content": "x"}]}), bad, Some("messages[0].role"), "is required").await;
    refused(&app, chat, json!({"messages": [{"role": "user", "content": 5}]}), bad, Some("messages[0].content"), "string or an array").await;
    refused(&app, chat, json!({"messages": [{"role": "user", "x y": 1}]}), bad, Some("messages[0].x y"), "not supported").await;
    refused(&app, c, json!({"prompt": "x", "top_k": 200000}), bad, Some("top_k"), "between 0 and 100000, got 200000").await;
    refused(&app, c, json!({"prompt": "x", "a.b c": 1}), bad, Some("a.b c"), "not a supported field").await;
    // Wrong JSON types: 422 naming the field.
    refused(&app, c, json!({"prompt": "x", "max_tokens": 1.5}), wrong_type, Some("max_tokens"), "invalid type").await;
    refused(&app, c, json!({"prompt": "x", "max_tokens": 1e300}), wrong_type, Some("max_tokens"), "invalid type").await;
    refused(&app, c, json!({"prompt": "x", "max_tokens": u64::MAX}), wrong_type, Some("max_tokens"), "expected i64").await;
    refused(&app, c, json!({"prompt": "x", "temperature": "hot"}), wrong_type, Some("temperature"), "invalid type").await;
    refused(&app, c, json!({"prompt": "x", "seed": -0.5}), wrong_type, Some("seed"), "invalid type").await;
    refused(&app, c, json!({"prompt": "x", "stream": "yes"}), wrong_type, Some("stream"), "invalid type").await;
    refused(&app, c, json!({"prompt": "x", "model": 7}), wrong_type, Some("model"), "invalid type").await;
    refused(&app, c, json!({"prompt": "x", "stream_options": {"include_usage": 1}}), wrong_type, Some("stream_options.include_usage"), "invalid type").await;
    refused(&app, chat, json!({"messages": "hi"}), wrong_type, Some("messages"), "invalid type").await;
    refused(&app, chat, json!({"messages": ["hi"]}), wrong_type, Some("messages[0]"), "invalid type").await;
    // The body as a whole.
    refused(&app, c, json!(["prompt"]), bad, None, "must be a JSON object").await;
    refused(&app, c, json!(null), bad, None, "must be a JSON object").await;
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found_on_both_endpoints() {
    let app = app();
    for (uri, body) in [
        ("/v1/completions", json!({"model": "gpt-4o", "prompt": "x"})),
        ("/v1/chat/completions", json!({"model": "", "messages": [{"role": "user", "content": "x"}]})),
    ] {
        let (status, v) = send(&app, uri, Body::from(body.to_string())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("does not exist")), "{v}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_even_without_a_content_length() {
    let app = app();
    let big = json!({"prompt": "x".repeat(LIMIT)}).to_string();
    let chunks: Vec<Result<String, std::io::Error>> = big.as_bytes().chunks(512).map(|c| Ok(String::from_utf8_lossy(c).into_owned())).collect();
    let (status, v) = send(&app, "/v1/chat/completions", Body::from_stream(futures_util::stream::iter(chunks))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("larger than 4096 bytes (--max-body-bytes)")), "{v}");
}

#[tokio::test]
async fn deeply_nested_json_is_400_not_a_stack_overflow() {
    let nested = format!(r#"{{"prompt": "x", "stop": {}"s"{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    // Under the body limit of this server, nested past serde_json's recursion limit.
    let nested = &nested[..LIMIT.min(nested.len())];
    let (status, v) = send(&app(), "/v1/completions", Body::from(nested.to_owned())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let shallow = format!(r#"{{"prompt": "x", "stop": {}"s"{}}}"#, "[".repeat(1000), "]".repeat(1000));
    let (status, v) = send(&app(), "/v1/completions", Body::from(shallow)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("recursion limit")), "{v}");
}

/// Whatever the body, the server answers with a 2xx or a 4xx in OpenAI's error shape: no 5xx.
#[test]
fn no_body_makes_the_server_answer_5xx() {
    use crate::props::requests::{chat_body, completion_body};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let app = rt.block_on(async { app() });
    let json = |uri: &'static str, body: serde_json::Map<String, Value>| (uri, Value::Object(body).to_string().into_bytes());
    let request = prop_oneof![
        completion_body().prop_map(move |b| json("/v1/completions", b)),
        chat_body().prop_map(move |b| json("/v1/chat/completions", b)),
        (prop::sample::select(vec!["/v1/completions", "/v1/chat/completions"]), prop::collection::vec(any::<u8>(), 0..200)),
    ];
    let mut runner = TestRunner::new(Config { cases: 128, ..Config::default() });
    let answered = std::cell::RefCell::new([0usize; 2]);
    runner
        .run(&request, |(uri, bytes)| {
            let (status, v) = rt.block_on(send(&app, uri, Body::from(bytes)));
            prop_assert!(status.is_success() || status.is_client_error(), "{status}: {v}");
            if status.is_client_error() {
                prop_assert_eq!(&v["error"]["type"], "invalid_request_error", "{}", v);
            }
            answered.borrow_mut()[usize::from(status.is_success())] += 1;
            Ok(())
        })
        .expect("property");
    // The bodies reach generation as well as refusals.
    let [refused, served] = *answered.borrow();
    assert!(refused > 0 && served > 0, "{refused} refused, {served} served");
}
