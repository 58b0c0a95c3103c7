//! Oversized client input to the gRPC services answers INVALID_ARGUMENT naming the field and the
//! limit (issue 9); the verifier service's checks need a model and are covered by the model tests.

use std::time::Duration;

use duet_proto::v1 as pb;
use duet_proto::v1::drafter_client::DrafterClient;
use tokio::sync::oneshot;
use tonic::Code;

use super::drafter_factory::ModelDrafters;
use super::drafter_service::{DrafterService, DrafterServiceConfig, MAX_CONTEXT_TOKENS};
use super::server::{GrpcServer, LocalServer};
use crate::drafters::DrafterKind;
use crate::engine::MAX_BLOCK_SIZE;

fn draft(id: &str, new_tokens: Vec<u32>, keep_len: u64) -> pb::DraftRequest {
    pb::DraftRequest { session_id: id.into(), new_tokens, keep_len, max_len: 4, ..Default::default() }
}

#[test]
fn oversized_drafter_input_names_the_field_and_the_limit() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let (ready_tx, ready_rx) = oneshot::channel();
        let factory = Box::new(ModelDrafters { diffusion: None, ar_model: None, default: DrafterKind::Ngram });
        let config = DrafterServiceConfig { idle_timeout: Duration::from_secs(60), ..DrafterServiceConfig::default() };
        let service = DrafterService::start(Box::new(move || Ok(factory)), config, ready_tx).expect("drafter thread");
        let server = GrpcServer::new().await.expect("server").add_service(service.into_server()).await;
        let health = server.health();
        let server = LocalServer::start(server).await.expect("bind");
        ready_rx.await.expect("loader").expect("load");
        health.set_serving().await;
        let mut c = DrafterClient::connect(server.url()).await.expect("connect").max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);

        let s = c.draft(draft("a", vec![1; MAX_CONTEXT_TOKENS + 1], 0)).await.expect_err("too many tokens");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("`new_tokens` must hold at most 131072 tokens, got 131073"), "{}", s.message());

        // Growing a session past the limit a call at a time is refused too, and the session survives.
        c.draft(draft("b", vec![1; MAX_CONTEXT_TOKENS], 0)).await.expect("at the limit");
        let s = c.draft(draft("b", vec![2], MAX_CONTEXT_TOKENS as u64)).await.expect_err("past the limit");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("`new_tokens` would grow the session's context to 131073 tokens; at most 131072"), "{}", s.message());
        c.draft(draft("b", vec![2], 10)).await.expect("the session is still usable");

        let previous = pb::PreviousBlock { draft: vec![1; MAX_BLOCK_SIZE + 1], accepted: 0, correction: 0 };
        let s = c.draft(pb::DraftRequest { previous: Some(previous), ..draft("c", vec![1], 0) }).await.expect_err("long block");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("`previous.draft` must hold at most 256 tokens (a block), got 257"), "{}", s.message());
    });
}

#[test]
fn an_oversized_or_nan_generate_request_names_the_field_and_the_limit() {
    use super::orchestrator_service::to_request;
    let prompt = |p: String| pb::GenerateRequest { input: Some(pb::generate_request::Input::Prompt(p)), ..Default::default() };
    let s = to_request(prompt("x".repeat(crate::service::MAX_PROMPT_BYTES + 1))).expect_err("oversized");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("`prompt` must be at most 33554432 bytes of text"), "{}", s.message());
    let sampling = |temperature, top_p| Some(pb::SamplingParams { temperature, top_p, ..Default::default() });
    for (r, needle) in [
        (pb::GenerateRequest { sampling: sampling(f32::NAN, 0.0), ..prompt("x".into()) }, "`temperature` must be between 0 and 2, got NaN"),
        (pb::GenerateRequest { sampling: sampling(0.0, f32::INFINITY), ..prompt("x".into()) }, "`top_p` must be in (0, 1], got inf"),
        (pb::GenerateRequest { stop: vec!["s".repeat(300)], ..prompt("x".into()) }, "`stop` strings are at most 256 bytes"),
    ] {
        let s = to_request(r).expect_err(needle);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with(needle), "{needle}: {}", s.message());
    }
}
