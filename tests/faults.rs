//! Faults with the real Qwen2.5-Coder-0.5B verifier, every server in this process on loopback:
//!
//! - a drafter service that goes away for part of a generation and comes back: greedy output
//!   equals verifier-only output, and speculation resumes;
//! - a verifier service that goes away between requests: generations answer gRPC UNAVAILABLE and
//!   HTTP 503 with a clear message (not INTERNAL / 500, not a hang), gRPC health and HTTP
//!   `/health` report not serving, and once the verifier is back the next request succeeds
//!   without restarting anything.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use duet_orchestrator::drafters::{DrafterHealth, DrafterKind};
use duet_orchestrator::engine::{self, GenerateParams, Mode};
use duet_orchestrator::grpc::drafter_factory::ModelDrafters;
use duet_orchestrator::grpc::remote_backend::watch_verifiers;
use duet_orchestrator::grpc::server::LocalServer;
use duet_orchestrator::grpc::{
    DrafterService, DrafterServiceConfig, GrpcServer, OrchestratorService, RemoteBackend, RemoteDrafterService,
    RemoteVerifiers, VerifierService, VerifierServiceConfig,
};
use duet_orchestrator::http::{AppState, router};
use duet_orchestrator::service::{GenerationService, ServiceConfig};
use duet_proto::v1 as pb;
use duet_proto::v1::orchestrator_client::OrchestratorClient;
use duet_tests::{load_prompts, prompt_tokens, small_verifier};
use duet_verifier::TokenId;
use tokio::runtime::Runtime;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime"))
}

fn ngram_server(addr: SocketAddr) -> LocalServer {
    rt().block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let load = Box::new(|| {
            Ok(Box::new(ModelDrafters { diffusion: None, ar_model: None, default: DrafterKind::Ngram })
                as Box<dyn duet_orchestrator::grpc::DrafterFactory>)
        });
        let service = DrafterService::start(load, DrafterServiceConfig::default(), tx).expect("drafter thread");
        rx.await.expect("loader").expect("load");
        let server = GrpcServer::new().await.expect("server").add_service(service.into_server()).await;
        server.health().set_serving().await;
        LocalServer::start_at(server, addr).await.expect("bind")
    })
}

/// A verifier service over the shared 0.5B model at `addr`, serving.
fn verifier_server(addr: SocketAddr) -> LocalServer {
    rt().block_on(async {
        let config = VerifierServiceConfig { idle_timeout: Duration::from_secs(60), max_sessions: 4, features: false };
        let service = VerifierService::with_verifier(small_verifier().clone(), config);
        let server = GrpcServer::new().await.expect("server").add_service(service.into_server()).await;
        server.health().set_serving().await;
        LocalServer::start_at(server, addr).await.expect("bind")
    })
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

#[test]
fn greedy_output_equals_verifier_only_while_the_drafter_is_down_for_part_of_the_generation() {
    let v = small_verifier();
    let prompts = load_prompts("lossless_prompts.jsonl");
    let p = prompts.iter().find(|p| p.id == "edit-rename").expect("edit-rename in lossless_prompts.jsonl");
    let prompt = prompt_tokens(v, p);
    let max_tokens = 64;
    let params = GenerateParams { max_tokens, mode: Mode::Hybrid, block_size: 6, ..GenerateParams::default() };
    let reference = engine::generate(
        &mut v.open_session().expect("session"),
        None,
        &prompt,
        &GenerateParams { mode: Mode::Ar, ..params.clone() },
        &|t| v.info().is_eog(t),
        &mut |_| true,
    )
    .expect("ar")
    .tokens;

    let server = ngram_server(any_port());
    let addr = server.addr;
    let drafters = RemoteDrafterService::new(&server.url(), rt().handle().clone(), Duration::from_secs(10))
        .expect("client")
        .with_health(DrafterHealth::with_backoff("test drafter", Duration::from_millis(50), Duration::from_millis(100)));
    let mut drafter = drafters.fallback_session("ngram", 0, None, "ngram");
    let mut server = Some(server);
    let (mut emitted, mut stopped_at, mut restarted_at) = (0, None, None);
    let mut on_tokens = |toks: &[TokenId]| {
        emitted += toks.len();
        if stopped_at.is_none() && emitted >= 8 {
            // The drafter process goes away...
            if let Some(s) = server.take() {
                rt().block_on(s.stop()).expect("stop");
            }
            stopped_at = Some(emitted);
        } else if restarted_at.is_none() && stopped_at.is_some() && emitted >= 24 {
            // ... and comes back on the same address.
            server = Some(ngram_server(addr));
            restarted_at = Some(emitted);
        }
        true
    };
    let mut session = v.open_session().expect("session");
    let g = engine::generate(&mut session, Some(&mut drafter), &prompt, &params, &|t| v.info().is_eog(t), &mut on_tokens)
        .expect("hybrid");
    assert!(restarted_at.is_some(), "the generation ended before the drafter came back ({emitted} tokens)");
    assert_eq!(g.tokens, reference, "greedy output differs from verifier-only output");
    assert!(g.stats.drafter_failures >= 1, "the outage was never noticed: {:?}", g.stats);
}

/// Status code and body of one HTTP/1.1 request (a raw socket: no client library needed).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

fn grpc_generate(url: &str, prompt: &str) -> Result<pb::GenerateResponse, tonic::Status> {
    let url = url.to_owned();
    let req = pb::GenerateRequest {
        input: Some(pb::generate_request::Input::Prompt(prompt.into())),
        max_tokens: 16,
        ..Default::default()
    };
    rt().block_on(async move {
        let mut c = OrchestratorClient::connect(url).await.expect("connect to the orchestrator");
        c.generate(req).await.map(|r| r.into_inner())
    })
}

fn grpc_health(url: &str) -> i32 {
    let url = url.to_owned();
    rt().block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url).expect("url").connect().await.expect("connect");
        let mut c = HealthClient::new(channel);
        c.check(HealthCheckRequest { service: String::new() }).await.map(|r| r.into_inner().status).unwrap_or(-1)
    })
}

/// Polls until `f` holds (the health watcher probes every 100 ms here); at most a minute.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} never happened");
}

#[test]
fn a_verifier_that_goes_away_answers_unavailable_and_503_and_the_next_request_after_it_returns_succeeds() {
    let verifier = verifier_server(any_port());
    let verifier_addr = verifier.addr;
    // The drafter service is never started: hybrid generations take AR steps throughout.
    let dead_drafter = format!("http://{}", std::net::TcpListener::bind(any_port()).and_then(|l| l.local_addr()).expect("port"));

    let backend = rt().block_on(async {
        let verifiers = RemoteVerifiers::connect(&[verifier.url()], rt().handle().clone(), Duration::from_secs(120))
            .await
            .expect("connect");
        let drafter = RemoteDrafterService::new(&dead_drafter, rt().handle().clone(), Duration::from_millis(500)).expect("client");
        Arc::new(RemoteBackend::new(verifiers, drafter, rt().handle().clone()).await.expect("backend"))
    });
    let config = ServiceConfig { max_running: 2, max_queued: 4, ..ServiceConfig::default() };
    let service = GenerationService::start(backend.clone(), config).expect("service");

    // The orchestrator over gRPC and HTTP, sharing the service; health follows the verifiers.
    let (orchestrator, http_addr, watcher) = rt().block_on(async {
        let grpc = GrpcServer::new()
            .await
            .expect("server")
            .add_service(OrchestratorService::with_service(service.clone()).into_server())
            .await;
        let health = grpc.health();
        let watcher = tokio::spawn(watch_verifiers(backend.clone(), Some(health), Duration::from_millis(100)));
        let orchestrator = LocalServer::start(grpc).await.expect("bind");
        let state = AppState::new(Vec::new(), None, 1 << 20);
        state.set_service(service.clone());
        let listener = tokio::net::TcpListener::bind(any_port()).await.expect("bind http");
        let http_addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        (orchestrator, http_addr, watcher)
    });
    let url = orchestrator.url();
    let prompt = "def fibonacci(n):";
    let body = serde_json::json!({ "prompt": prompt, "max_tokens": 16 }).to_string();
    let serving = ServingStatus::Serving as i32;

    eventually("gRPC health SERVING", || grpc_health(&url) == serving);
    let before = grpc_generate(&url, prompt).expect("a generation while the verifier is up");
    assert!(!before.token_ids.is_empty());
    let (code, text) = http(http_addr, "POST", "/v1/completions", &body);
    assert_eq!(code, 200, "{text}");

    // The verifier process goes away in the middle of a streamed generation: the stream ends with
    // UNAVAILABLE.
    let stream_url = url.clone();
    let mid_stream = rt().block_on(async move {
        let mut c = OrchestratorClient::connect(stream_url).await.expect("connect");
        let req = pb::GenerateRequest {
            input: Some(pb::generate_request::Input::Prompt("// A long C++ tutorial on templates\n".into())),
            max_tokens: 400,
            mode: pb::Mode::Ar as i32,
            ..Default::default()
        };
        let mut stream = c.generate_stream(req).await.expect("GenerateStream").into_inner();
        let first = stream.message().await.expect("first message");
        assert!(first.is_some(), "the stream ended at once");
        verifier.stop().await.expect("stop the verifier");
        loop {
            match stream.message().await {
                Ok(Some(pb::GenerateStreamResponse { event: Some(pb::generate_stream_response::Event::Final(f)) })) => {
                    panic!("the generation finished without its verifier: {f:?}")
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without an error"),
                Err(s) => break s,
            }
        }
    });
    assert_eq!(mid_stream.code(), Code::Unavailable, "{mid_stream:?}");
    let err = grpc_generate(&url, prompt).expect_err("a generation without a verifier");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("verifier"), "the message does not say what is missing: {}", err.message());
    let (code, text) = http(http_addr, "POST", "/v1/completions", &body);
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("verifier"), "{text}");
    eventually("gRPC health NOT_SERVING", || grpc_health(&url) == ServingStatus::NotServing as i32);
    eventually("HTTP /health 503", || http(http_addr, "GET", "/health", "").0 == 503);

    // It comes back on the same address: the next request succeeds, nothing restarted.
    let _verifier = verifier_server(verifier_addr);
    eventually("gRPC health SERVING again", || grpc_health(&url) == serving);
    assert_eq!(http(http_addr, "GET", "/health", "").0, 200);
    let after = grpc_generate(&url, prompt).expect("a generation after the verifier came back");
    assert_eq!(after.token_ids, before.token_ids, "the output changed across the outage");
    let (code, text) = http(http_addr, "POST", "/v1/completions", &body);
    assert_eq!(code, 200, "{text}");
    watcher.abort();
}
