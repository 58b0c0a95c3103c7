//! A client that goes away mid-stream frees its generation: the service's running count, the
//! verifier's open sessions and its KV cache all return to zero. Real Qwen2.5-Coder-0.5B behind the
//! HTTP router (no socket: dropping the response body is the disconnect).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use duet_orchestrator::http::{AppState, router};
use duet_orchestrator::service::{GenerationService, Models, ServiceConfig};
use duet_verifier::{Verifier, VerifierConfig};
use futures_util::StreamExt as _;
use serde_json::json;
use tower::ServiceExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_frees_its_session_and_kv_cache() {
    let mut cfg = VerifierConfig::new(common::small_model());
    cfg.ctx_size = 1024;
    cfg.max_sessions = 2;
    let verifier = tokio::task::spawn_blocking(move || Verifier::load(cfg)).await.expect("join").expect("load the 0.5B");
    let models = Models::new(verifier.clone(), "qwen-0.5b".into(), None, None).expect("models");
    let config = ServiceConfig { max_running: 2, max_queued: 2, ..ServiceConfig::default() };
    let service = GenerationService::start(Arc::new(models), config).expect("service");
    let state = AppState::new(vec![], None, 1 << 20);
    state.set_service(service.clone());

    // Two streams at once; both go away after their first chunks, long before 400 tokens.
    let mut bodies = Vec::new();
    for prompt in ["def quicksort(xs):\n", "// A linked list in Rust\n"] {
        let body = json!({ "model": "qwen-0.5b", "prompt": prompt, "max_tokens": 400, "stream": true });
        let req = Request::builder()
            .method("POST")
            .uri("/v1/completions")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = router(state.clone()).oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut stream = resp.into_body().into_data_stream();
        let first = stream.next().await.expect("a first chunk").expect("chunk");
        assert!(String::from_utf8_lossy(&first).contains("data:"), "not an event stream");
        bodies.push(stream);
    }
    let busy = tokio::task::spawn_blocking({
        let s = service.clone();
        move || s.verifier_usage()
    })
    .await
    .expect("join")
    .expect("a local verifier");
    assert_eq!(busy.sessions, 2, "both generations hold a session while streaming");
    assert!(busy.kv_tokens > 0);
    drop(bodies);

    // The generations notice at their next accepted tokens; allow plenty of time on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    let idle = loop {
        let s = service.clone();
        let usage = tokio::task::spawn_blocking(move || s.verifier_usage()).await.expect("join").expect("usage");
        let load = service.load();
        if (load.running, load.queued, usage.sessions, usage.kv_tokens) == (0, 0, 0, 0) || Instant::now() > deadline {
            break (load, usage);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (load, usage) = idle;
    assert_eq!((load.running, load.queued), (0, 0), "generations still running after their clients left");
    assert_eq!((usage.sessions, usage.kv_tokens), (0, 0), "sessions or KV entries left after the clients left");
    assert_eq!(service.cancelled(), 2, "the generations ended by themselves instead of being cancelled");
}
