//! What the network hops cost: the same greedy generations with the verifier and the drafter in
//! process, and split over loopback gRPC (the verifier and drafter services started in this
//! process on port 0, the engine talking to them as `duet orchestrator serve` does). Reported per
//! round, the prompt's prefill left out, so the difference between the two is the price of the
//! hops: serialising the request and verdict, two trips through the loopback TCP stack and
//! tonic, and the hand-over to the blocking threads on the server side.
//!
//! Both transports must produce the same tokens (they run the same model); a difference is an
//! error, not a measurement.

use std::time::Duration;

use duet_verifier::{TokenId, Verifier};
use serde::Serialize;
use tokio::runtime::Runtime;

use super::drafter_factory::ModelDrafters;
use super::server::LocalServer;
use super::{DrafterFactory, DrafterService, DrafterServiceConfig, GrpcServer, RemoteDrafterService, RemoteVerifiers};
use super::{VerifierService, VerifierServiceConfig};
use crate::drafters::{DrafterKind, NgramDrafter};
use crate::engine::{self, Drafter, GenerateParams, Mode, Stats, VerifierSession};

/// Per-round costs of one mode over one transport, summed over the prompts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HopRow {
    /// `ar` or `hybrid-ngram`.
    pub mode: &'static str,
    /// `in-process` or `split-grpc`.
    pub transport: &'static str,
    /// Verification rounds (prefill not counted).
    pub rounds: usize,
    /// Tokens generated.
    pub tokens: usize,
    /// Wall time per round after the prompt, in milliseconds.
    pub ms_per_round: f64,
    /// Of which waiting for the verifier.
    pub verifier_ms_per_round: f64,
    /// Of which waiting for the drafter.
    pub drafter_ms_per_round: f64,
}

/// Errors of a measurement.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// A server or client could not start.
    #[error("setting up the services: {0}")]
    Setup(String),
    /// A generation failed.
    #[error("generating: {0}")]
    Generate(#[from] engine::EngineError),
    /// The transports disagree.
    #[error("prompt {prompt}: split generation differs from in-process generation ({mode})")]
    Mismatch {
        /// Index of the prompt.
        prompt: usize,
        /// The mode.
        mode: &'static str,
    },
}

#[derive(Default)]
struct Sum {
    rounds: usize,
    tokens: usize,
    after_prefill_s: f64,
    verifier_s: f64,
    drafter_s: f64,
}

impl Sum {
    fn add(&mut self, s: &Stats) {
        self.rounds += s.rounds;
        self.tokens += s.generated_tokens;
        // ttft_s is the prompt's prefill, which both transports pay once.
        self.after_prefill_s += s.wall_s - s.ttft_s;
        self.verifier_s += s.verifier_s - s.ttft_s;
        self.drafter_s += s.drafter_s;
    }

    fn row(&self, mode: &'static str, transport: &'static str) -> HopRow {
        let per = |s: f64| if self.rounds > 0 { 1e3 * s / self.rounds as f64 } else { 0.0 };
        HopRow {
            mode,
            transport,
            rounds: self.rounds,
            tokens: self.tokens,
            ms_per_round: per(self.after_prefill_s),
            verifier_ms_per_round: per(self.verifier_s),
            drafter_ms_per_round: per(self.drafter_s),
        }
    }
}

/// Runs every prompt in `ar` and `hybrid` (n-gram drafter) mode, in process and split over
/// loopback gRPC, and returns one row per mode and transport. `verifier` must have a free session
/// for each transport; `rt` must not be the caller's own runtime (the engine blocks on it).
pub fn measure(
    verifier: &Verifier,
    prompts: &[Vec<TokenId>],
    max_tokens: usize,
    block_size: usize,
    rt: &Runtime,
) -> Result<Vec<HopRow>, HopError> {
    let setup = |e: &dyn std::fmt::Display| HopError::Setup(e.to_string());
    let config = VerifierServiceConfig { idle_timeout: Duration::from_secs(300), max_sessions: 1, features: false };
    let (vserver, dserver) = rt.block_on(async {
        let service = VerifierService::with_verifier(verifier.clone(), config);
        let server = GrpcServer::new().await.map_err(|e| setup(&e))?.add_service(service.into_server()).await;
        let vserver = LocalServer::start(server).await.map_err(|e| setup(&e))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let load = Box::new(|| {
            Ok(Box::new(ModelDrafters { diffusion: None, ar_model: None, default: DrafterKind::Ngram }) as Box<dyn DrafterFactory>)
        });
        let drafter = DrafterService::start(load, DrafterServiceConfig::default(), tx).map_err(|e| setup(&e))?;
        rx.await.map_err(|e| setup(&e))?.map_err(|e| setup(&e))?;
        let server = GrpcServer::new().await.map_err(|e| setup(&e))?.add_service(drafter.into_server()).await;
        let dserver = LocalServer::start(server).await.map_err(|e| setup(&e))?;
        Ok::<_, HopError>((vserver, dserver))
    })?;
    let remote = rt
        .block_on(RemoteVerifiers::connect(&[vserver.url()], rt.handle().clone(), Duration::from_secs(300)))
        .map_err(|e| setup(&e))?;
    let drafts = RemoteDrafterService::new(&dserver.url(), rt.handle().clone(), Duration::from_secs(30)).map_err(|e| setup(&e))?;
    let info = verifier.info();
    let is_eog = |t: TokenId| info.is_eog(t);

    let mut rows = Vec::new();
    for (mode, label) in [(Mode::Ar, "ar"), (Mode::Hybrid, "hybrid-ngram")] {
        let params = GenerateParams { max_tokens, mode, block_size, ..GenerateParams::default() };
        let (mut local, mut split) = (Sum::default(), Sum::default());
        for (i, prompt) in prompts.iter().enumerate() {
            let mut session = verifier.open_session().map_err(|e| setup(&e))?;
            let mut ngram = NgramDrafter::default();
            let drafter: Option<&mut dyn Drafter> = (mode == Mode::Hybrid).then_some(&mut ngram as &mut dyn Drafter);
            let a = engine::generate(&mut session, drafter, prompt, &params, &is_eog, &mut |_| true)?;
            drop(session);

            let mut session = rt.block_on(remote.open_session(None, false)).map_err(|e| setup(&e))?;
            let mut remote_drafter = drafts.session("ngram", 0, None);
            let drafter: Option<&mut dyn Drafter> =
                (mode == Mode::Hybrid).then_some(&mut remote_drafter as &mut dyn Drafter);
            let b = engine::generate(&mut session as &mut dyn VerifierSession, drafter, prompt, &params, &is_eog, &mut |_| true)?;
            if a.tokens != b.tokens {
                return Err(HopError::Mismatch { prompt: i, mode: label });
            }
            local.add(&a.stats);
            split.add(&b.stats);
        }
        rows.push(local.row(label, "in-process"));
        rows.push(split.row(label, "split-grpc"));
    }
    Ok(rows)
}

/// The rows as a Markdown table, with the hop cost (split minus in-process) per mode.
pub fn markdown(rows: &[HopRow]) -> String {
    let mut out = String::from(
        "| mode | transport | rounds | tokens | ms/round | verifier ms/round | drafter ms/round |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.3} |\n",
            r.mode, r.transport, r.rounds, r.tokens, r.ms_per_round, r.verifier_ms_per_round, r.drafter_ms_per_round
        ));
    }
    for pair in rows.chunks(2) {
        if let [a, b] = pair {
            out.push_str(&format!(
                "\n{}: the hops add {:.2} ms per round ({:.2} → {:.2}).",
                a.mode,
                b.ms_per_round - a.ms_per_round,
                a.ms_per_round,
                b.ms_per_round
            ));
        }
    }
    out.push('\n');
    out
}
