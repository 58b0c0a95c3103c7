//! The HTTP router on the real Qwen2.5-Coder-0.5B (no socket): greedy answers equal the engine's own
//! verifier-only output, fill-in-the-middle uses the model's FIM tokens, and a prompt over the context
//! is a 400 `context_length_exceeded`.

mod common;

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use duet_orchestrator::engine::{self, GenerateParams, Mode};
use duet_orchestrator::http::{AppState, router};
use duet_orchestrator::service::{GenerationService, Models, ServiceConfig};
use duet_verifier::{SamplingParams, Verifier, VerifierConfig};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const CTX: u32 = 512;

/// One verifier and service for every test of this file.
fn loaded() -> &'static (Verifier, GenerationService) {
    static LOADED: OnceLock<(Verifier, GenerationService)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let mut cfg = VerifierConfig::new(common::small_model());
        cfg.ctx_size = CTX;
        cfg.max_sessions = 3;
        let verifier = Verifier::load(cfg).expect("load the 0.5B");
        let models = Models::new(verifier.clone(), "qwen-0.5b".into(), None, None).expect("models");
        assert!(models.has_fim(), "Qwen2.5-Coder has FIM tokens");
        let config = ServiceConfig { max_running: 2, max_queued: 2, ..ServiceConfig::default() };
        let service = GenerationService::start(Arc::new(models), config).expect("service");
        (verifier, service)
    })
}

async fn complete(body: Value) -> (StatusCode, Value) {
    let state = AppState::new(vec![], None, 1 << 20);
    state.set_service(loaded().1.clone());
    let req = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let resp = router(state).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24).await.expect("body");
    (status, serde_json::from_slice(&bytes).expect("json"))
}

/// Verifier-only greedy text for a raw prompt, straight from the engine.
fn reference(prompt: &str, max_tokens: usize) -> String {
    reference_with(prompt, max_tokens, SamplingParams::default())
}

/// Verifier-only text for a raw prompt with these sampling settings, straight from the engine.
fn reference_with(prompt: &str, max_tokens: usize, sampling: SamplingParams) -> String {
    let verifier = &loaded().0;
    let info = verifier.info();
    let tokens = verifier.tokenize(prompt, true).expect("tokenize");
    let mut session = verifier.open_session().expect("session");
    let params = GenerateParams { max_tokens, mode: Mode::Ar, block_size: 1, sampling, ..GenerateParams::default() };
    let g = engine::generate(&mut session, None, &tokens, &params, &|t| info.is_eog(t), &mut |_| true).expect("generate");
    String::from_utf8_lossy(&info.detokenize(&g.tokens)).into_owned()
}

#[tokio::test]
async fn greedy_completions_equal_the_verifier_alone_in_every_mode() {
    let prompt = "fn fibonacci(n: u64) -> u64 {\n";
    let expected = reference(prompt, 20);
    for mode in ["ar", "hybrid"] {
        let (status, v) = complete(json!({"prompt": prompt, "max_tokens": 20, "mode": mode, "block_size": 4})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["text"], expected, "mode {mode}");
        assert_eq!(v["usage"]["completion_tokens"], 20);
    }
}

#[tokio::test]
async fn a_seeded_sampled_completion_equals_the_engines_own_and_repeats() {
    let prompt = "# A short poem about the sea\n";
    let sampling = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 7 };
    let expected = reference_with(prompt, 16, sampling);
    let body = json!({"prompt": prompt, "max_tokens": 16, "mode": "ar", "temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7});
    for _ in 0..2 {
        let (status, v) = complete(body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["text"], expected);
    }
    // Hybrid sampling keeps the verifier's distribution (tests/sampling.rs); here it must simply run
    // and be reproducible for its seed.
    let mut hybrid = body.clone();
    hybrid["mode"] = json!("hybrid");
    let (s1, a) = complete(hybrid.clone()).await;
    let (s2, b) = complete(hybrid).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{a} {b}");
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!(a["usage"]["completion_tokens"], 16);
}

#[tokio::test]
async fn suffix_fills_in_the_middle_with_the_fim_tokens() {
    let (prefix, suffix) = ("def area(r):\n    return ", "\n\nprint(area(2))\n");
    let expected = reference(&format!("<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"), 12);
    let (status, v) = complete(json!({"prompt": prefix, "suffix": suffix, "max_tokens": 12, "mode": "ar"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(!expected.is_empty());
    assert_eq!(v["choices"][0]["text"], expected);
}

#[tokio::test]
async fn a_prompt_over_the_context_is_context_length_exceeded() {
    let (status, v) = complete(json!({"prompt": "word ".repeat(700)})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("the context holds 512")), "{v}");
}
