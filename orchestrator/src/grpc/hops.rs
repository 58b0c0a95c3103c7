//! What the network hops cost: the same greedy generations with the verifier and the drafter in
//! process, and split over loopback gRPC (the verifier and drafter services started in this
//! process on port 0, the engine talking to them as `duet orchestrator serve` does). Reported per
//! round, the prompt's prefill left out, so the difference between the two is the price of the
//! hops: serialising the request and verdict, two trips through the loopback TCP stack and
//! tonic, and the hand-over to the blocking threads on the server side.
//!
//! Both transports must produce the same tokens (they run the same model); a difference is an
//! error, not a measurement. `duet bench --hops N` runs this after its other modes; the table is
//! in `hops_table.rs` ([`markdown`]).

use std::time::Duration;

use duet_verifier::{TokenId, Verifier};
use serde::Serialize;
use tokio::runtime::Runtime;

pub use super::hops_table::{HopCost, costs, markdown};

use super::drafter_factory::{DiffusionSetup, ModelDrafters};
use super::server::LocalServer;
use super::{DrafterFactory, DrafterService, DrafterServiceConfig, GrpcServer, RemoteDrafterService, RemoteVerifiers};
use super::{VerifierService, VerifierServiceConfig};
use crate::drafters::{DiffusionDrafter, DrafterKind, NgramDrafter};
use crate::engine::{self, Drafter, GenerateParams, Mode, Stats, VerifierSession};

/// Per-round costs of one mode over one transport, summed over the prompts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HopRow {
    /// `ar`, `hybrid-ngram` or `hybrid-diffusion`.
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

/// What [`measure`] runs.
#[derive(Debug, Clone)]
pub struct HopConfig {
    /// Most draft tokens per round.
    pub block_size: usize,
    /// The block-diffusion drafter: with it, `hybrid-diffusion` is measured too, served over gRPC as
    /// `duet drafter serve` serves it.
    pub diffusion: Option<DiffusionSetup>,
    /// Whether the verifier returns hidden states. A drafter conditioned on them needs it, and the
    /// split run then carries them over gRPC, as `duet verifier serve --features` does.
    pub features: bool,
}

/// One prompt: its tokens and how many to generate.
#[derive(Debug, Clone)]
pub struct HopPrompt {
    /// The prompt's tokens.
    pub tokens: Vec<TokenId>,
    /// Tokens to generate.
    pub max_tokens: usize,
}

/// The modes [`measure`] runs for `config`, in order: `ar`, `hybrid-ngram`, and
/// `hybrid-diffusion` when a diffusion drafter is given.
pub fn modes(config: &HopConfig) -> Vec<&'static str> {
    let mut m = vec!["ar", "hybrid-ngram"];
    if config.diffusion.is_some() {
        m.push("hybrid-diffusion");
    }
    m
}

/// The drafter service's name of a mode's drafter, `None` for `ar`.
fn drafter_name(mode: &str) -> Option<&'static str> {
    match mode {
        "hybrid-ngram" => Some("ngram"),
        "hybrid-diffusion" => Some("diffusion"),
        _ => None,
    }
}

/// Runs every prompt in each of [`modes`], in process and split over loopback gRPC, and returns one
/// row per mode and transport. Every proposed draft is sent (the fixed draft length), so both
/// transports run the same rounds and differ only by the hops. `progress` is called after each
/// generation (2 per prompt and mode) with what ran. `verifier` needs one free session; `rt`
/// must not be the caller's own runtime (the engine blocks on it).
pub fn measure(
    verifier: &Verifier,
    prompts: &[HopPrompt],
    config: &HopConfig,
    rt: &Runtime,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<HopRow>, HopError> {
    let setup = |e: &dyn std::fmt::Display| HopError::Setup(e.to_string());
    let info = verifier.info();
    let feature_dim = match config.diffusion.as_ref().and_then(|d| d.model.feature_dim()) {
        Some(d) if config.features && d == info.n_embd as usize => d,
        Some(d) => {
            return Err(HopError::Setup(format!(
                "the diffusion drafter is conditioned on hidden states of width {d}, but the verifier {} gives {}",
                info.description,
                if config.features { info.n_embd.to_string() } else { "none".into() }
            )));
        }
        None => 0,
    };
    let vconfig = VerifierServiceConfig { idle_timeout: Duration::from_secs(300), max_sessions: 1, features: config.features };
    let factory = ModelDrafters { diffusion: config.diffusion.clone(), ar_model: None, default: DrafterKind::Ngram };
    let (vserver, dserver) = rt.block_on(async {
        let service = VerifierService::with_verifier(verifier.clone(), vconfig);
        let server = GrpcServer::new().await.map_err(|e| setup(&e))?.add_service(service.into_server()).await;
        let vserver = LocalServer::start(server).await.map_err(|e| setup(&e))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let load = Box::new(move || Ok(Box::new(factory) as Box<dyn DrafterFactory>));
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
    // Connect now, so the first draft call does not pay for the TCP handshake.
    rt.block_on(drafts.info()).map_err(|e| setup(&e))?;
    let is_eog = |t: TokenId| info.is_eog(t);

    let mut rows = Vec::new();
    for label in modes(config) {
        let mode = if label == "ar" { Mode::Ar } else { Mode::Hybrid };
        let (mut local, mut split) = (Sum::default(), Sum::default());
        for (i, prompt) in prompts.iter().enumerate() {
            let params = GenerateParams { max_tokens: prompt.max_tokens, mode, block_size: config.block_size, ..GenerateParams::default() };
            let mut session = verifier.open_session().map_err(|e| setup(&e))?;
            let mut drafter = local_drafter(label, config)?;
            let a = engine::generate(&mut session, drafter.as_mut().map(|d| d.as_mut() as &mut dyn Drafter), &prompt.tokens, &params, &is_eog, &mut |_| true)?;
            drop(session);
            progress(&format!("{label} in-process prompt {}/{}", i + 1, prompts.len()));

            let hidden = label == "hybrid-diffusion" && feature_dim > 0;
            let mut session = rt.block_on(remote.open_session(None, hidden)).map_err(|e| setup(&e))?;
            let mut remote_drafter = drafter_name(label).map(|name| {
                drafts.session(name, if name == "diffusion" { feature_dim } else { 0 }, None)
            });
            let drafter = remote_drafter.as_mut().map(|d| d as &mut dyn Drafter);
            let b = engine::generate(&mut session as &mut dyn VerifierSession, drafter, &prompt.tokens, &params, &is_eog, &mut |_| true)?;
            // Wait for the slot to be free: the next in-process generation may need it (a bench
            // at concurrency 1 loads a verifier of one session).
            session.close().map_err(|e| setup(&e))?;
            progress(&format!("{label} split-grpc prompt {}/{}", i + 1, prompts.len()));
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

/// The in-process drafter of a mode, `None` for `ar`.
fn local_drafter(label: &str, config: &HopConfig) -> Result<Option<Box<dyn Drafter>>, HopError> {
    Ok(match label {
        "hybrid-ngram" => Some(Box::new(NgramDrafter::default())),
        "hybrid-diffusion" => {
            let d = config.diffusion.as_ref().ok_or_else(|| HopError::Setup("no diffusion drafter".into()))?;
            let drafter = DiffusionDrafter::new(d.model.clone(), d.sampler.clone(), d.hints).map_err(|e| HopError::Setup(e.to_string()))?;
            Some(Box::new(drafter))
        }
        _ => None,
    })
}
