//! The verifier service with the real Qwen2.5-Coder-0.5B model, in this process on port 0: the
//! engine over gRPC-backed verifier sessions and drafters generates exactly what it generates in
//! process; sessions spread over replicas; limits and bad requests get the right status codes.

use std::sync::OnceLock;
use std::time::Duration;

use duet_orchestrator::drafters::DrafterKind;
use duet_orchestrator::engine::{self, Drafter, GenerateParams, Mode, VerifierSession};
use duet_orchestrator::grpc::drafter_factory::ModelDrafters;
use duet_orchestrator::grpc::hops::{HopConfig, HopPrompt};
use duet_orchestrator::grpc::server::LocalServer;
use duet_orchestrator::grpc::{
    DrafterService, DrafterServiceConfig, GrpcServer, RemoteDrafterService, RemoteVerifiers, VerifierService,
    VerifierServiceConfig,
};
use duet_proto::v1 as pb;
use duet_proto::v1::verifier_client::VerifierClient;
use duet_tests::{load_prompts, prompt_tokens, small_model_path, small_verifier};
use duet_verifier::{TokenId, Verifier, VerifierConfig};
use tokio::runtime::Runtime;
use tonic::Code;

const MAX_TOKENS: usize = 32;

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime"))
}

fn service_config(max_sessions: u32) -> VerifierServiceConfig {
    VerifierServiceConfig { idle_timeout: Duration::from_secs(60), max_sessions, features: false }
}

/// A verifier service over the shared 0.5B model, serving.
fn verifier_server(config: VerifierServiceConfig) -> LocalServer {
    rt().block_on(async {
        let service = VerifierService::with_verifier(small_verifier().clone(), config);
        let server = GrpcServer::new().await.expect("server").add_service(service.into_server()).await;
        server.health().set_serving().await;
        LocalServer::start(server).await.expect("bind")
    })
}

fn ngram_server() -> LocalServer {
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
        LocalServer::start(server).await.expect("bind")
    })
}

fn connect(urls: &[String]) -> RemoteVerifiers {
    rt().block_on(RemoteVerifiers::connect(urls, rt().handle().clone(), Duration::from_secs(120))).expect("connect")
}

fn generate(session: &mut dyn VerifierSession, drafter: Option<&mut dyn Drafter>, prompt: &[TokenId], mode: Mode) -> Vec<TokenId> {
    let v = small_verifier();
    let params = GenerateParams { max_tokens: MAX_TOKENS, mode, block_size: 6, ..GenerateParams::default() };
    engine::generate(session, drafter, prompt, &params, &|t| v.info().is_eog(t), &mut |_| true).expect("generate").tokens
}

#[test]
fn hybrid_over_grpc_equals_ar_in_process() {
    let verifier = verifier_server(service_config(8));
    let drafter = ngram_server();
    let verifiers = connect(&[verifier.url()]);
    let drafters = RemoteDrafterService::new(&drafter.url(), rt().handle().clone(), Duration::from_secs(10)).expect("client");
    let v = small_verifier();
    let prompts = load_prompts("lossless_prompts.jsonl");
    let mut checked = 0;
    // A chat prompt and a copy-heavy edit (long accepted blocks). The in-process engine equals ar
    // on every prompt (tests/lossless.rs), so ar is the one reference.
    for p in prompts.iter().filter(|p| ["chat-json", "edit-rename"].contains(&p.id.as_str())) {
        let prompt = prompt_tokens(v, p);
        let ar = generate(&mut v.open_session().expect("session"), None, &prompt, Mode::Ar);
        let mut session = rt().block_on(verifiers.open_session(None, false)).expect("remote session");
        let mut remote_drafter = drafters.session("ngram", 0, None);
        let remote = generate(&mut session, Some(&mut remote_drafter), &prompt, Mode::Hybrid);
        assert_eq!(remote, ar, "{}: hybrid over gRPC differs from ar in process", p.id);
        checked += 1;
    }
    assert_eq!(checked, 2, "prompts missing from lossless_prompts.jsonl");
}

#[test]
fn sessions_spread_over_replicas_and_stay_on_theirs() {
    let a = verifier_server(service_config(8));
    let b = verifier_server(service_config(8));
    let verifiers = connect(&[a.url(), b.url()]);
    let s1 = rt().block_on(verifiers.open_session(None, false)).expect("first");
    let s2 = rt().block_on(verifiers.open_session(None, false)).expect("second");
    assert_ne!(s1.replica(), s2.replica(), "two sessions landed on one replica");
    assert_eq!(verifiers.open_sessions(), vec![1, 1]);
    // A session keeps talking to its own replica: its id is unknown to the other one.
    let mut other = rt().block_on(VerifierClient::connect(if s1.replica() == a.url() { b.url() } else { a.url() })).expect("connect");
    let err = rt()
        .block_on(other.step(pb::StepRequest { session_id: s1.id().to_owned(), ..Default::default() }))
        .expect_err("foreign session");
    assert_eq!(err.code(), Code::NotFound);
    drop(s1);
    assert_eq!(verifiers.open_sessions().iter().sum::<usize>(), 1);
}

#[test]
fn a_full_verifier_answers_resource_exhausted_and_a_closed_session_frees_its_slot() {
    // A verifier of its own with two sessions, so other tests cannot take its slots.
    let mut cfg = VerifierConfig::new(small_model_path());
    cfg.ctx_size = 256;
    cfg.max_sessions = 2;
    cfg.threads = 1;
    let verifier = Verifier::load(cfg).expect("loading the 0.5B verifier");
    let server = rt().block_on(async {
        let service = VerifierService::with_verifier(verifier, service_config(2));
        let server = GrpcServer::new().await.expect("server").add_service(service.into_server()).await;
        server.health().set_serving().await;
        LocalServer::start(server).await.expect("bind")
    });
    let mut c = rt().block_on(VerifierClient::connect(server.url())).expect("connect");
    let mut open = || rt().block_on(c.open_session(pb::OpenSessionRequest {})).map(|r| r.into_inner().session_id);
    let first = open().expect("first");
    let _second = open().expect("second");
    let refused = open().expect_err("a third session");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let mut c = rt().block_on(VerifierClient::connect(server.url())).expect("connect");
    let closed = rt().block_on(c.close_session(pb::CloseSessionRequest { session_id: first })).expect("close");
    assert!(closed.into_inner().existed);
    rt().block_on(c.open_session(pb::OpenSessionRequest {})).expect("the closed session's slot is free again");
}

#[test]
fn bad_verifier_requests_answer_invalid_argument_naming_the_field() {
    let server = verifier_server(service_config(8));
    let mut c = rt().block_on(VerifierClient::connect(server.url())).expect("connect");
    let id = rt().block_on(c.open_session(pb::OpenSessionRequest {})).expect("open").into_inner().session_id;
    let n_vocab = small_verifier().info().n_vocab as u32;
    let checks: Vec<(Result<tonic::Response<pb::Verdict>, tonic::Status>, &str)> = vec![
        (rt().block_on(c.prefill(pb::PrefillRequest { session_id: id.clone(), ..Default::default() })), "`tokens`"),
        (
            rt().block_on(c.prefill(pb::PrefillRequest { session_id: id.clone(), tokens: vec![n_vocab + 5], ..Default::default() })),
            "`tokens`",
        ),
        (rt().block_on(c.prefill(pb::PrefillRequest { tokens: vec![1], ..Default::default() })), "`session_id`"),
        (
            rt().block_on(c.verify(pb::VerifyRequest {
                session_id: id.clone(),
                draft: vec![1, 2],
                draft_probs: vec![0.5],
                ..Default::default()
            })),
            "`draft_probs`",
        ),
        (
            rt().block_on(c.verify(pb::VerifyRequest { session_id: id.clone(), draft: vec![1; 300], ..Default::default() })),
            "`draft`",
        ),
        (
            rt().block_on(c.step(pb::StepRequest { session_id: id.clone(), return_hidden_states: true, ..Default::default() })),
            "`return_hidden_states`",
        ),
    ];
    for (res, field) in checks {
        let s = res.expect_err(field);
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().starts_with(field), "{field}: {}", s.message());
    }
    rt().block_on(c.close_session(pb::CloseSessionRequest { session_id: id })).expect("close");
}

#[test]
fn measure_costs_answers_a_curve_that_starts_at_one_and_refuses_bad_sizes_naming_the_field() {
    let server = verifier_server(service_config(8));
    let v = small_verifier();
    let context = v.tokenize("def add(a, b):\n    return a + b\n", false).expect("tokens");
    let mut c = rt().block_on(VerifierClient::connect(server.url())).expect("connect");
    let req = pb::MeasureCostsRequest { context: context.clone(), sizes: vec![4, 1, 2], repeats: 1 };
    let r = rt().block_on(c.measure_costs(req)).expect("MeasureCosts").into_inner();
    assert_eq!(r.sizes, vec![0, 1, 2, 4], "0 is always timed, sizes ascending");
    assert_eq!(r.seconds.len(), 4);
    assert!(r.seconds.iter().all(|t| t.is_finite() && *t > 0.0), "{:?}", r.seconds);
    assert_eq!(r.step_s, r.seconds[0]);
    assert_eq!(r.costs.len(), 5, "c(0) to c(4)");
    assert_eq!(r.costs[0], 1.0);
    assert!(r.costs.iter().all(|k| k.is_finite() && *k > 0.0), "{:?}", r.costs);

    // The orchestrator's client builds the engine's curve from it.
    let verifiers = connect(&[server.url()]);
    let (url, curve) = rt().block_on(verifiers.measure_costs(&context, &[2], 1)).expect("client");
    assert_eq!(url, server.url());
    assert_eq!(curve.costs.len(), 3);
    assert_eq!(curve.costs[0], 1.0);
    assert!(curve.step_s > 0.0 && curve.step_s.is_finite());

    let n_ctx = v.info().ctx_size;
    let bad = [
        (pb::MeasureCostsRequest { context: context.clone(), sizes: vec![300], repeats: 1 }, "`sizes`", "at most 256"),
        (pb::MeasureCostsRequest { context: context.clone(), sizes: vec![1], repeats: 50 }, "`repeats`", "between 1 and 10"),
        (pb::MeasureCostsRequest { context: Vec::new(), sizes: vec![1], repeats: 1 }, "`context`", "at least one token"),
        (pb::MeasureCostsRequest { context: vec![1; n_ctx], sizes: vec![8], repeats: 1 }, "`context`", "room for the largest block"),
    ];
    for (req, field, limit) in bad {
        let s = rt().block_on(c.measure_costs(req)).expect_err(field);
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().starts_with(field) && s.message().contains(limit), "{field}: {}", s.message());
    }
}

/// The hop measurement alternates in-process and split generations on one verifier; a verifier of
/// a single session (`duet bench --concurrency 1`) must do, so the split session's slot has to be
/// free again before the next in-process generation starts.
#[test]
fn the_hop_measurement_runs_on_a_one_session_verifier_and_both_transports_agree() {
    let mut cfg = VerifierConfig::new(small_model_path());
    cfg.ctx_size = 512;
    cfg.max_sessions = 1;
    cfg.threads = 1;
    let verifier = Verifier::load(cfg).expect("loading the 0.5B verifier");
    let p = load_prompts("lossless_prompts.jsonl").into_iter().find(|p| p.id == "edit-rename").expect("edit-rename prompt");
    let prompts: Vec<HopPrompt> = (0..2).map(|_| HopPrompt { tokens: prompt_tokens(&verifier, &p), max_tokens: 8 }).collect();
    let config = HopConfig { block_size: 4, diffusion: None, features: false };
    let mut ticks = 0;
    let rows = duet_orchestrator::grpc::hops::measure(&verifier, &prompts, &config, rt(), &mut |_| ticks += 1).expect("measurement");
    assert_eq!(ticks, 2 * 2 * 2, "2 prompts × 2 modes × 2 transports");
    let cells: Vec<(&str, &str)> = rows.iter().map(|r| (r.mode, r.transport)).collect();
    assert_eq!(cells, [("ar", "in-process"), ("ar", "split-grpc"), ("hybrid-ngram", "in-process"), ("hybrid-ngram", "split-grpc")]);
    for pair in rows.chunks(2) {
        assert_eq!(pair[0].tokens, pair[1].tokens, "{pair:?}");
        assert!(pair.iter().all(|r| r.rounds > 0 && r.ms_per_round > 0.0), "{pair:?}");
    }
}

/// The cost of the network hops, per round, in process against split over loopback gRPC (the
/// 0.5B verifier, n-gram drafter). A measurement, not a check: run it on a quiet machine with
/// `cargo test -p duet-tests --release --test grpc network_hops -- --ignored --nocapture`
/// (`duet bench --hops N` measures the same on the bench's models and prompts).
#[test]
#[ignore = "a measurement; run it by hand on a quiet machine"]
fn network_hops_cost_per_round() {
    let v = small_verifier();
    let prompts: Vec<HopPrompt> =
        load_prompts("lossless_prompts.jsonl").iter().take(6).map(|p| HopPrompt { tokens: prompt_tokens(v, p), max_tokens: 64 }).collect();
    let config = HopConfig { block_size: 6, diffusion: None, features: false };
    let rows = duet_orchestrator::grpc::hops::measure(v, &prompts, &config, rt(), &mut |_| {}).expect("measurement");
    println!("{}", duet_orchestrator::grpc::hops::markdown(&rows));
    println!("{}", serde_json::to_string(&rows).expect("JSON"));
}
