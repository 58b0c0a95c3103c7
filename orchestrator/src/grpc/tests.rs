//! The drafter service and its client over real loopback sockets (servers on port 0), without
//! models: the n-gram drafter and drafters made for the test. Verifier-side tests with the real
//! model are in `tests/grpc.rs`.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duet_proto::v1 as pb;
use duet_proto::v1::drafter_client::DrafterClient;
use duet_verifier::{Choice, TokenId, Verdict, VerifierError};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::drafter_factory::ModelDrafters;
use super::server::LocalServer;
use super::*;
use crate::drafters::{DrafterKind, NgramDrafter};
use crate::engine::{self, Draft, DraftError, DraftRequest, Drafter, GenerateParams, Mode, VerifierSession};

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Starts a drafter service over `load` on port 0; returns once it is up (not necessarily loaded).
fn drafter_server(rt: &Runtime, load: LoadDrafters, config: DrafterServiceConfig) -> (LocalServer, Health, oneshot::Receiver<Result<(), String>>) {
    rt.block_on(async {
        let (ready_tx, ready_rx) = oneshot::channel();
        let service = DrafterService::start(load, config, ready_tx).expect("drafter thread");
        let server = GrpcServer::new().await.expect("server").add_service(service.into_server()).await;
        let health = server.health();
        (LocalServer::start(server).await.expect("bind"), health, ready_rx)
    })
}

/// A loaded drafter service whose health is SERVING.
fn ready_drafter_server(rt: &Runtime, factory: Box<dyn DrafterFactory>, config: DrafterServiceConfig) -> LocalServer {
    let (server, health, ready) = drafter_server(rt, Box::new(move || Ok(factory)), config);
    rt.block_on(async {
        ready.await.expect("loader").expect("load");
        health.set_serving().await;
    });
    server
}

fn ngram_only() -> Box<dyn DrafterFactory> {
    Box::new(ModelDrafters { diffusion: None, ar_model: None, default: DrafterKind::Ngram })
}

use super::drafter_service::LoadDrafters;

/// Test drafters: record the context they were given, or block until released.
struct Scripted {
    seen: Arc<Mutex<Vec<Vec<TokenId>>>>,
    started: Option<Sender<()>>,
    release: Option<Arc<Mutex<Receiver<()>>>>,
}

impl Drafter for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        if let Ok(mut s) = self.seen.lock() {
            s.push(req.context.to_vec());
        }
        if let Some(tx) = &self.started {
            let _ = tx.send(());
        }
        if let Some(rx) = &self.release {
            let _ = rx.lock().map(|r| r.recv());
        }
        // Propose the last context token, repeated: easy to check.
        let last = req.context.last().copied().unwrap_or(0);
        Ok(Draft { tokens: vec![last; req.max_len.min(3)], probs: vec![0.5; req.max_len.min(3)], ..Draft::default() })
    }
}

struct ScriptedFactory {
    seen: Arc<Mutex<Vec<Vec<TokenId>>>>,
    started: Option<Sender<()>>,
    release: Option<Arc<Mutex<Receiver<()>>>>,
}

impl DrafterFactory for ScriptedFactory {
    fn drafters(&self) -> Vec<pb::DrafterDescription> {
        vec![pb::DrafterDescription { name: "scripted".into(), ..Default::default() }]
    }
    fn default_drafter(&self) -> String {
        "scripted".into()
    }
    fn open(&self, _: &str) -> Result<SessionDrafter, DraftError> {
        Ok(SessionDrafter::Engine(Box::new(Scripted {
            seen: self.seen.clone(),
            started: self.started.clone(),
            release: self.release.clone(),
        })))
    }
}

/// The contexts a scripted drafter saw, call by call.
type Seen = Arc<Mutex<Vec<Vec<TokenId>>>>;

fn recording() -> (Box<dyn DrafterFactory>, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    (Box::new(ScriptedFactory { seen: seen.clone(), started: None, release: None }), seen)
}

fn service(rt: &Runtime, server: &LocalServer) -> RemoteDrafterService {
    RemoteDrafterService::new(&server.url(), rt.handle().clone(), Duration::from_secs(10)).expect("client")
}

fn raw_client(rt: &Runtime, server: &LocalServer) -> DrafterClient<tonic::transport::Channel> {
    let url = server.url();
    rt.block_on(async move { DrafterClient::connect(url).await.expect("connect") })
}

async fn grpc_channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned()).expect("url").connect().await.expect("connect")
}

fn draft_req(id: &str, tokens: Vec<TokenId>, max_len: u32) -> pb::DraftRequest {
    pb::DraftRequest { session_id: id.into(), new_tokens: tokens, max_len, ..Default::default() }
}

#[test]
fn remote_ngram_drafts_equal_in_process_drafts() {
    let rt = rt();
    let server = ready_drafter_server(&rt, ngram_only(), DrafterServiceConfig::default());
    let mut remote = service(&rt, &server).session("ngram", 0, None);
    let mut local = NgramDrafter::default();
    let mut context: Vec<TokenId> = vec![5, 1, 2, 3, 9, 1, 2, 3, 7, 1, 2];
    for round in 0..6 {
        let req = DraftRequest { context: &context, previous: None, max_len: 4, features: None };
        let want = local.propose(&req).expect("local");
        let got = remote.propose(&req).expect("remote");
        assert_eq!(got, want, "round {round}");
        context.extend_from_slice(&[round as TokenId % 3 + 1, 2]);
    }
}

#[test]
fn only_new_context_tokens_travel_and_the_service_sees_the_whole_context() {
    let rt = rt();
    let (factory, seen) = recording();
    let server = ready_drafter_server(&rt, factory, DrafterServiceConfig::default());
    let mut remote = service(&rt, &server).session("", 0, None);
    let mut context: Vec<TokenId> = vec![1, 2, 3];
    for _ in 0..3 {
        let req = DraftRequest { context: &context, previous: None, max_len: 2, features: None };
        let wire = remote.request(&req);
        let draft = remote.propose(&req).expect("draft");
        assert_eq!(draft.tokens, vec![*context.last().expect("context"); 2]);
        if context.len() > 3 {
            assert_eq!(wire.keep_len as usize, context.len() - 2, "only the two new tokens travel");
            assert_eq!(wire.new_tokens.len(), 2);
        }
        context.extend_from_slice(&[4, 5]);
    }
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen, vec![vec![1, 2, 3], vec![1, 2, 3, 4, 5], vec![1, 2, 3, 4, 5, 4, 5]]);
}

#[test]
fn a_session_the_service_lost_is_resent_whole() {
    let rt = rt();
    let (factory, seen) = recording();
    let server = ready_drafter_server(&rt, factory, DrafterServiceConfig::default());
    let mut remote = service(&rt, &server).session("", 0, None);
    let context: Vec<TokenId> = vec![7, 8, 9];
    remote.propose(&DraftRequest { context: &context, previous: None, max_len: 2, features: None }).expect("first");
    // The service forgets the session (as after a restart or an idle timeout).
    let mut raw = raw_client(&rt, &server);
    let id = remote.session_id().to_owned();
    rt.block_on(raw.close_session(pb::CloseDraftSessionRequest { session_id: id })).expect("close");
    let longer: Vec<TokenId> = vec![7, 8, 9, 10];
    let d = remote.propose(&DraftRequest { context: &longer, previous: None, max_len: 2, features: None }).expect("resent");
    assert_eq!(d.tokens, vec![10, 10]);
    assert_eq!(seen.lock().expect("seen").last(), Some(&longer));
}

#[test]
fn a_full_queue_answers_resource_exhausted() {
    let rt = rt();
    let (started_tx, started_rx) = channel();
    let (release_tx, release_rx) = channel();
    let factory = Box::new(ScriptedFactory {
        seen: Arc::default(),
        started: Some(started_tx),
        release: Some(Arc::new(Mutex::new(release_rx))),
    });
    let config = DrafterServiceConfig { queue_depth: 1, ..Default::default() };
    let server = ready_drafter_server(&rt, factory, config);
    let client = raw_client(&rt, &server);
    // The first call occupies the drafter thread until released.
    let mut c1 = client.clone();
    let first = rt.spawn(async move { c1.draft(draft_req("a", vec![1], 2)).await });
    started_rx.recv().expect("first call started");
    // Of three more calls at once, one takes the single queue slot and two are refused.
    let others: Vec<_> = ["b", "c", "d"]
        .into_iter()
        .map(|id| {
            let mut c = client.clone();
            rt.spawn(async move { c.draft(draft_req(id, vec![2], 2)).await })
        })
        .collect();
    // Wait for two answers (the refusals): the queued call cannot finish before the releases.
    rt.block_on(async {
        while others.iter().filter(|h| h.is_finished()).count() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    for _ in 0..2 {
        release_tx.send(()).expect("release");
    }
    assert!(rt.block_on(first).expect("join").is_ok());
    let results: Vec<_> = others.into_iter().map(|h| rt.block_on(h).expect("join")).collect();
    let codes: Vec<Code> = results.iter().filter_map(|r| r.as_ref().err().map(|s| s.code())).collect();
    assert_eq!(codes, vec![Code::ResourceExhausted; 2], "{results:?}");
}

#[test]
fn sessions_beyond_the_limit_answer_resource_exhausted() {
    let rt = rt();
    let config = DrafterServiceConfig { max_sessions: 1, ..Default::default() };
    let server = ready_drafter_server(&rt, ngram_only(), config);
    let mut c = raw_client(&rt, &server);
    rt.block_on(c.draft(draft_req("one", vec![1, 2], 2))).expect("first session");
    let s = rt.block_on(c.draft(draft_req("two", vec![1, 2], 2))).expect_err("second session");
    assert_eq!(s.code(), Code::ResourceExhausted);
    // Closing the first frees its place.
    rt.block_on(c.close_session(pb::CloseDraftSessionRequest { session_id: "one".into() })).expect("close");
    rt.block_on(c.draft(draft_req("two", vec![1, 2], 2))).expect("after close");
}

#[test]
fn bad_draft_requests_answer_invalid_argument_naming_the_field() {
    let rt = rt();
    let server = ready_drafter_server(&rt, ngram_only(), DrafterServiceConfig::default());
    let mut c = raw_client(&rt, &server);
    let cases: Vec<(pb::DraftRequest, &str)> = vec![
        (draft_req("", vec![1], 2), "`session_id`"),
        (draft_req("s", vec![1], 0), "`max_len`"),
        (draft_req("s", vec![1], 999), "`max_len`"),
        (pb::DraftRequest { drafter: "nope".into(), ..draft_req("s", vec![1], 2) }, "`drafter`"),
        (draft_req("s", vec![], 2), "`new_tokens`"),
        (
            pb::DraftRequest {
                features: Some(pb::Features { dim: 3, first_row: 0, data: vec![1.0; 4] }),
                ..draft_req("s2", vec![1], 2)
            },
            "`features`",
        ),
        (
            pb::DraftRequest {
                previous: Some(pb::PreviousBlock { draft: vec![1], accepted: 3, correction: 0 }),
                ..draft_req("s3", vec![1], 2)
            },
            "`previous.accepted`",
        ),
    ];
    for (req, field) in cases {
        let s = rt.block_on(c.draft(req)).expect_err(field);
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().starts_with(field), "{field}: {}", s.message());
    }
    // keep_len past what the session holds: the client must resend.
    rt.block_on(c.draft(draft_req("k", vec![1, 2], 2))).expect("open");
    let s = rt.block_on(c.draft(pb::DraftRequest { keep_len: 9, ..draft_req("k", vec![3], 2) })).expect_err("keep_len");
    assert_eq!(s.code(), Code::FailedPrecondition);
}

#[test]
fn health_turns_serving_only_after_the_drafters_load() {
    let rt = rt();
    let (go_tx, go_rx) = channel::<()>();
    let load: LoadDrafters = Box::new(move || {
        go_rx.recv().map_err(|e| e.to_string())?;
        Ok(ngram_only())
    });
    let (server, health, ready) = drafter_server(&rt, load, DrafterServiceConfig::default());
    let url = server.url();
    let mut h = HealthClient::new(rt.block_on(grpc_channel(&url)));
    let check = |h: &mut HealthClient<_>, service: &str| {
        rt.block_on(h.check(tonic_health::pb::HealthCheckRequest { service: service.into() }))
            .expect("check")
            .into_inner()
            .status()
    };
    assert_eq!(check(&mut h, ""), ServingStatus::NotServing);
    assert_eq!(check(&mut h, "duet.v1.Drafter"), ServingStatus::NotServing);
    // Calls before the load answer UNAVAILABLE.
    let mut c = raw_client(&rt, &server);
    assert_eq!(rt.block_on(c.info(pb::DrafterInfoRequest {})).expect_err("loading").code(), Code::Unavailable);
    go_tx.send(()).expect("go");
    rt.block_on(async {
        ready.await.expect("loader").expect("load");
        health.set_serving().await;
    });
    assert_eq!(check(&mut h, ""), ServingStatus::Serving);
    assert_eq!(check(&mut h, "duet.v1.Drafter"), ServingStatus::Serving);
    let info = rt.block_on(c.info(pb::DrafterInfoRequest {})).expect("info").into_inner();
    assert_eq!(info.default_drafter, "ngram");
}

#[test]
fn reflection_lists_the_duet_and_health_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let rt = rt();
    let server = ready_drafter_server(&rt, ngram_only(), DrafterServiceConfig::default());
    let url = server.url();
    let names = rt.block_on(async move {
        let mut c = ServerReflectionClient::new(grpc_channel(&url).await);
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut stream = c.server_reflection_info(tokio_stream::iter(vec![req])).await.expect("call").into_inner();
        let resp = stream.message().await.expect("message").expect("one response");
        match resp.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    });
    for want in ["duet.v1.Drafter", "duet.v1.Verifier", "duet.v1.Orchestrator", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}

#[test]
fn shutdown_lets_a_call_in_flight_finish() {
    let rt = rt();
    let (started_tx, started_rx) = channel();
    let (release_tx, release_rx) = channel();
    let factory = Box::new(ScriptedFactory {
        seen: Arc::default(),
        started: Some(started_tx),
        release: Some(Arc::new(Mutex::new(release_rx))),
    });
    let server = ready_drafter_server(&rt, factory, DrafterServiceConfig::default());
    let mut c = raw_client(&rt, &server);
    let call = rt.spawn(async move { c.draft(draft_req("s", vec![4], 2)).await });
    started_rx.recv().expect("started");
    let stopped = rt.spawn(server.stop());
    release_tx.send(()).expect("release");
    let answer = rt.block_on(call).expect("join").expect("the call in flight completes");
    assert_eq!(answer.into_inner().tokens, vec![4, 4]);
    rt.block_on(stopped).expect("join").expect("clean stop");
}

/// A verifier stand-in: the next token is a fixed function of the last two (as in the engine tests).
struct ToySession {
    ctx: Vec<TokenId>,
    pending: TokenId,
}

fn toy_next(ctx: &[TokenId]) -> TokenId {
    let a = ctx.last().copied().unwrap_or(0);
    let b = ctx.len().checked_sub(2).map_or(0, |i| ctx[i]);
    (a * 7 + b * 3 + 1) % 11
}

impl VerifierSession for ToySession {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.ctx = prompt.to_vec();
        self.pending = toy_next(&self.ctx);
        let c = Choice { token: self.pending, prob: 1.0, margin: 1.0 };
        Ok(Verdict { accepted: 0, next: c, choices: vec![c], features: vec![], next_dist: vec![], batch: Default::default() })
    }
    fn step(&mut self) -> Result<Verdict, VerifierError> {
        self.verify(&[])
    }
    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.ctx.push(self.pending);
        let mut choices = Vec::new();
        let mut accepted = 0;
        loop {
            let c = Choice { token: toy_next(&self.ctx), prob: 1.0, margin: 1.0 };
            choices.push(c);
            match draft.get(accepted) {
                Some(&d) if d == c.token => {
                    self.ctx.push(d);
                    accepted += 1;
                }
                _ => break,
            }
        }
        self.pending = choices[accepted].token;
        Ok(Verdict { accepted, next: choices[accepted], choices, features: vec![], next_dist: vec![], batch: Default::default() })
    }
    fn room(&self) -> usize {
        1000 - self.ctx.len()
    }
}

#[test]
fn a_drafter_service_that_dies_mid_generation_leaves_the_output_unchanged() {
    let rt = rt();
    let server = ready_drafter_server(&rt, ngram_only(), DrafterServiceConfig::default());
    let service = service(&rt, &server);
    let params = GenerateParams { max_tokens: 60, mode: Mode::Hybrid, block_size: 4, ..GenerateParams::default() };
    let prompt: Vec<TokenId> = vec![1, 2, 3];
    let mut ar_session = ToySession { ctx: vec![], pending: 0 };
    let ar = engine::generate(&mut ar_session, None, &prompt, &params, &|_| false, &mut |_| true).expect("ar");

    let mut drafter = service.session("ngram", 0, None);
    let mut session = ToySession { ctx: vec![], pending: 0 };
    let mut server = Some(server);
    let mut batches = 0;
    let mut on_tokens = |_: &[TokenId]| {
        batches += 1;
        if batches == 3 {
            // The drafter process goes away mid-generation.
            if let Some(s) = server.take() {
                rt.block_on(s.stop()).expect("stop");
            }
        }
        true
    };
    let g = engine::generate(&mut session, Some(&mut drafter), &prompt, &params, &|_| false, &mut on_tokens)
        .expect("hybrid");
    assert_eq!(g.tokens, ar.tokens);
    assert!(g.stats.drafter_failures >= 1, "the dead drafter was never noticed: {:?}", g.stats);
}

mod orchestrator {
    //! `duet.v1.Orchestrator` over the generation service on the scripted backend, on port 0.

    use std::sync::Arc;
    use std::time::Duration;

    use duet_proto::v1 as pb;
    use duet_proto::v1::orchestrator_client::OrchestratorClient;
    use tonic::Code;

    use super::{grpc_channel, rt};
    use crate::grpc::server::LocalServer;
    use crate::grpc::{GrpcServer, OrchestratorService};
    use crate::service::testing::ScriptedBackend;
    use crate::service::{GenerationService, ServiceConfig};

    const SCRIPT: &str = "fn main() {\n    println!(\"hi\");\n}\n";

    fn start(rt: &tokio::runtime::Runtime, backend: ScriptedBackend, max_running: usize, max_queued: usize) -> (LocalServer, GenerationService) {
        let config = ServiceConfig { max_running, max_queued, ..ServiceConfig::default() };
        let service = GenerationService::start(Arc::new(backend), config).expect("service");
        let server = rt.block_on(async {
            let grpc = GrpcServer::new().await.expect("server");
            let grpc = grpc.add_service(OrchestratorService::with_service(service.clone()).into_server()).await;
            grpc.health().set_serving().await;
            LocalServer::start(grpc).await.expect("bind")
        });
        (server, service)
    }

    fn prompt(text: &str) -> pb::GenerateRequest {
        pb::GenerateRequest { input: Some(pb::generate_request::Input::Prompt(text.into())), ..Default::default() }
    }

    #[test]
    fn generate_and_generate_stream_return_the_same_text_and_final_stats() {
        let rt = rt();
        let (server, _service) = start(&rt, ScriptedBackend::new("scripted", SCRIPT, 512), 2, 2);
        let url = server.url();
        rt.block_on(async move {
            let mut c = OrchestratorClient::new(grpc_channel(&url).await);
            let whole = c.generate(prompt("fn main")).await.expect("Generate").into_inner();
            assert_eq!(whole.text, SCRIPT);
            assert_eq!(whole.stop_reason(), pb::StopReason::Eos);
            let mut stream = c.generate_stream(prompt("fn main")).await.expect("stream").into_inner();
            let (mut text, mut last) = (String::new(), None);
            while let Some(m) = stream.message().await.expect("message") {
                match m.event {
                    Some(pb::generate_stream_response::Event::Delta(d)) => text.push_str(&d.text),
                    Some(pb::generate_stream_response::Event::Final(f)) => last = Some(f),
                    None => panic!("empty message"),
                }
            }
            assert_eq!(text, whole.text);
            let last = last.expect("a final message");
            assert_eq!(last.stats.expect("stats").generated_tokens as usize, SCRIPT.len());
        });
    }

    #[test]
    fn a_full_orchestrator_answers_resource_exhausted_and_a_deadline_cancels() {
        let rt = rt();
        let (backend, gate) = ScriptedBackend::new("scripted", SCRIPT, 512).gated();
        let (server, service) = start(&rt, backend, 1, 0);
        let url = server.url();
        rt.block_on(async move {
            let mut c = OrchestratorClient::new(grpc_channel(&url).await);
            // The first call holds the only place (the gate keeps it at its prompt) until its deadline.
            let first = prompt("a").into_request_with_timeout(Duration::from_millis(300));
            let mut c2 = c.clone();
            let held = tokio::spawn(async move { c2.generate(first).await });
            while service.load().running + service.load().queued == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let busy = c.generate(prompt("b")).await.expect_err("busy");
            assert_eq!(busy.code(), Code::ResourceExhausted, "{busy:?}");
            let expired = held.await.expect("join").expect_err("deadline");
            assert!(matches!(expired.code(), Code::DeadlineExceeded | Code::Cancelled), "{expired:?}");
            // The cancelled generation frees its place once it gets past the gate.
            gate.open();
            while service.load().running + service.load().queued > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let ok = c.generate(prompt("c")).await.expect("served after the cancel").into_inner();
            assert_eq!(ok.text, SCRIPT);
        });
    }

    trait WithTimeout: Sized {
        fn into_request_with_timeout(self, t: Duration) -> tonic::Request<Self>;
    }

    impl WithTimeout for pb::GenerateRequest {
        fn into_request_with_timeout(self, t: Duration) -> tonic::Request<Self> {
            let mut r = tonic::Request::new(self);
            r.set_timeout(t);
            r
        }
    }
}
