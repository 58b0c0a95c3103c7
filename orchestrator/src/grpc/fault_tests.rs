//! Faults of the drafter service, over real loopback sockets without models: a drafter service
//! that stops and comes back, and one that is too slow. Greedy output must equal verifier-only
//! output whatever the drafter does; speculation must resume once it answers again.

use std::net::SocketAddr;
use std::time::Duration;

use duet_verifier::{Choice, TokenId, Verdict, VerifierError};
use tokio::runtime::Runtime;

use super::drafter_factory::ModelDrafters;
use super::server::LocalServer;
use super::*;
use crate::drafters::{DrafterHealth, DrafterKind};
use crate::engine::{self, Draft, DraftError, DraftFailure, DraftRequest, Drafter, GenerateParams, Mode, VerifierSession};

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A drafter service (n-gram, or the given factory) at `addr`, loaded and SERVING.
fn drafter_server(rt: &Runtime, addr: SocketAddr, factory: Box<dyn DrafterFactory>) -> LocalServer {
    rt.block_on(async {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let service = DrafterService::start(Box::new(move || Ok(factory)), DrafterServiceConfig::default(), ready_tx)
            .expect("drafter thread");
        ready_rx.await.expect("loader").expect("load");
        let server = GrpcServer::new().await.expect("server").add_service(service.into_server()).await;
        server.health().set_serving().await;
        LocalServer::start_at(server, addr).await.expect("bind")
    })
}

fn ngram() -> Box<dyn DrafterFactory> {
    Box::new(ModelDrafters { diffusion: None, ar_model: None, default: DrafterKind::Ngram })
}

/// A toy verifier whose greedy continuation of a context is a function of its last token, with
/// period 40, so the n-gram drafter finds long matches once the output repeats.
struct ToySession {
    /// The context, ending with the pending token.
    ctx: Vec<TokenId>,
}

fn toy(t: TokenId) -> TokenId {
    t % 40 + 1
}

impl VerifierSession for ToySession {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.ctx = prompt.to_vec();
        self.verify(&[])
    }
    fn step(&mut self) -> Result<Verdict, VerifierError> {
        self.verify(&[])
    }
    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        let mut choices = Vec::new();
        let mut accepted = 0;
        loop {
            let c = Choice { token: toy(self.ctx.last().copied().unwrap_or(0)), prob: 1.0, margin: 1.0 };
            choices.push(c);
            match draft.get(accepted) {
                Some(&t) if t == c.token => {
                    self.ctx.push(t);
                    accepted += 1;
                }
                _ => break,
            }
        }
        self.ctx.push(choices[accepted].token);
        Ok(Verdict { accepted, next: choices[accepted], choices, features: vec![], next_dist: vec![], batch: Default::default() })
    }
    fn room(&self) -> usize {
        100_000 - self.ctx.len()
    }
}

fn params(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, mode: Mode::Hybrid, block_size: 6, ..GenerateParams::default() }
}

fn ar(prompt: &[TokenId], max_tokens: usize) -> Vec<TokenId> {
    let p = GenerateParams { mode: Mode::Ar, ..params(max_tokens) };
    engine::generate(&mut ToySession { ctx: vec![] }, None, prompt, &p, &|_| false, &mut |_| true).expect("ar").tokens
}

#[test]
fn a_drafter_service_stopped_and_restarted_mid_generation_costs_speed_only_and_speculation_resumes() {
    let rt = rt();
    let server = drafter_server(&rt, "127.0.0.1:0".parse().expect("addr"), ngram());
    let addr = server.addr;
    let service = RemoteDrafterService::new(&server.url(), rt.handle().clone(), Duration::from_secs(5))
        .expect("client")
        .with_health(DrafterHealth::with_backoff("test drafter", Duration::from_millis(20), Duration::from_millis(40)));
    let mut drafter = service.fallback_session("ngram", 0, None, "ngram");
    let prompt: Vec<TokenId> = vec![1, 2, 3];
    let max_tokens = 3000;

    // Rounds: speculating until the 60th token, then the service is stopped; once a round has
    // gone without a draft it is restarted on the same port, and the test watches for a verified
    // block (more than one token in a round) after that.
    #[derive(PartialEq)]
    enum Phase {
        Up,
        Down,
        Restarted,
        Resumed,
    }
    let mut phase = Phase::Up;
    let mut server = Some(server);
    let mut emitted = 0;
    let mut blocks_before_stop = 0;
    let mut on_tokens = |toks: &[TokenId]| {
        emitted += toks.len();
        match phase {
            Phase::Up => {
                blocks_before_stop += usize::from(toks.len() > 1);
                if emitted >= 60 {
                    if let Some(s) = server.take() {
                        rt.block_on(s.stop()).expect("stop");
                    }
                    phase = Phase::Down;
                }
            }
            Phase::Down if service.health().is_down() => {
                server = Some(drafter_server(&rt, addr, ngram()));
                phase = Phase::Restarted;
            }
            Phase::Down => {}
            Phase::Restarted if toks.len() > 1 => phase = Phase::Resumed,
            // Give the back-off window time to pass (the toy verifier is instant).
            Phase::Restarted => std::thread::sleep(Duration::from_millis(2)),
            Phase::Resumed => {}
        }
        true
    };
    let g = engine::generate(&mut ToySession { ctx: vec![] }, Some(&mut drafter), &prompt, &params(max_tokens), &|_| false, &mut on_tokens)
        .expect("hybrid");
    assert_eq!(g.tokens, ar(&prompt, max_tokens), "the output changed while the drafter was away");
    assert!(blocks_before_stop > 0, "the drafter never drafted before it was stopped");
    assert!(phase == Phase::Resumed, "speculation did not resume after the drafter came back: {:?}", g.stats.accepted_lengths);
    assert!(g.stats.drafter_failures >= 1, "{:?}", g.stats);
    assert!(!service.health().is_down());
}

/// Answers every proposal after `delay`.
struct Slow {
    delay: Duration,
}

impl Drafter for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        std::thread::sleep(self.delay);
        let last = req.context.last().copied().unwrap_or(0);
        Ok(Draft { tokens: vec![toy(last)], probs: vec![1.0], ..Draft::default() })
    }
}

struct SlowFactory(Duration);

impl DrafterFactory for SlowFactory {
    fn drafters(&self) -> Vec<duet_proto::v1::DrafterDescription> {
        vec![duet_proto::v1::DrafterDescription { name: "slow".into(), ..Default::default() }]
    }
    fn default_drafter(&self) -> String {
        "slow".into()
    }
    fn open(&self, _: &str) -> Result<SessionDrafter, DraftError> {
        Ok(SessionDrafter::Engine(Box::new(Slow { delay: self.0 })))
    }
}

#[test]
fn a_drafter_slower_than_its_deadline_times_out_and_is_left_alone_for_the_window() {
    // The process-wide Prometheus recorder (the one `duet serve` installs), to read the counter.
    let prometheus = crate::http::metrics::prometheus().expect("recorder");
    let rt = rt();
    let server = drafter_server(&rt, "127.0.0.1:0".parse().expect("addr"), Box::new(SlowFactory(Duration::from_millis(400))));
    let service = RemoteDrafterService::new(&server.url(), rt.handle().clone(), Duration::from_millis(50))
        .expect("client")
        .with_health(DrafterHealth::with_backoff("slow drafter", Duration::from_secs(60), Duration::from_secs(60)));
    let mut drafter = service.fallback_session("slow", 0, None, "slow");
    let prompt: Vec<TokenId> = vec![5, 6, 7];
    let mut reasons = Vec::new();
    let ctx = prompt.clone();
    for _ in 0..3 {
        let req = DraftRequest { context: &ctx, previous: None, max_len: 4, features: None };
        reasons.push(drafter.propose(&req).err().map(|e| e.kind));
    }
    assert_eq!(reasons, vec![Some(DraftFailure::Timeout), Some(DraftFailure::Backoff), Some(DraftFailure::Backoff)]);
    // A whole generation in the window runs at AR speed with AR's output.
    let g = engine::generate(&mut ToySession { ctx: vec![] }, Some(&mut drafter), &prompt, &params(50), &|_| false, &mut |_| true)
        .expect("hybrid");
    assert_eq!(g.tokens, ar(&prompt, 50));
    assert_eq!(g.stats.drafted, 0);
    let scrape = prometheus.render();
    for reason in ["timeout", "backoff"] {
        assert!(
            scrape.lines().any(|l| l.starts_with("duet_drafter_fallbacks_total{")
                && l.contains("drafter=\"slow\"")
                && l.contains(&format!("reason=\"{reason}\""))),
            "no {reason} fallback counted:\n{scrape}"
        );
    }
}
