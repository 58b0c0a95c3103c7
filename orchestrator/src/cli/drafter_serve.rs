//! `duet drafter serve`: the drafter as a gRPC service of its own (`duet.v1.Drafter`).

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio::sync::oneshot;

use super::grpc_common::{ServeArgs, bind, runtime, serve_until_shutdown};
use super::options::{DiffusionArgs, ModelArgs};
use crate::drafters::DrafterKind;
use crate::grpc::drafter_factory::{DiffusionSetup, ModelDrafters};
use crate::grpc::{DrafterFactory, DrafterService, DrafterServiceConfig, GrpcServer};

/// `duet drafter ...`
#[derive(Debug, Subcommand)]
pub enum DrafterCommand {
    /// Serve drafts over gRPC (`duet.v1.Drafter`) for `duet orchestrator serve`.
    Serve(DrafterServeArgs),
}

/// Flags of `duet drafter serve`.
#[derive(Debug, Args)]
pub struct DrafterServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stderr).
    #[arg(long, env = "DUET_DRAFTER_LISTEN", default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
    /// The drafter of requests that name none; its model is loaded. N-gram lookup is always offered.
    #[arg(long, value_enum, default_value_t = DrafterKind::Diffusion)]
    pub drafter: DrafterKind,
    /// GGUF file of the small drafting model for `--drafter ar-model`
    /// [default: <models dir>/qwen2.5-coder-0.5b-instruct.gguf].
    #[arg(long, env = "DUET_DRAFTER_MODEL")]
    pub drafter_model: Option<std::path::PathBuf>,
    /// Context length of a drafting-model session, in tokens.
    #[arg(long, env = "DUET_CTX_SIZE", default_value_t = duet_verifier::config::DEFAULT_CTX_SIZE)]
    pub ctx_size: u32,
    /// CPU threads for the drafting model [default: all cores].
    #[arg(long, env = "DUET_THREADS")]
    pub threads: Option<u32>,
    /// Sessions held at once; a new session beyond them is refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64)]
    pub max_sessions: usize,
    /// Draft calls that may wait for the drafter thread; beyond them calls get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 32)]
    pub queue_depth: usize,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

/// Runs `duet drafter ...`.
pub fn run(command: DrafterCommand) -> anyhow::Result<()> {
    match command {
        DrafterCommand::Serve(args) => serve(args),
    }
}

fn serve(args: DrafterServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.max_sessions >= 1, "`--max-sessions` must be at least 1, got 0");
    anyhow::ensure!(args.queue_depth >= 1, "`--queue-depth` must be at least 1, got 0");
    let config = DrafterServiceConfig {
        max_sessions: args.max_sessions,
        queue_depth: args.queue_depth,
        idle_timeout: args.serve.idle_timeout()?,
    };
    // Check the flags before the server starts; the models load on the drafter thread.
    let sampler = args.diffusion.sampler()?;
    let models = ModelArgs {
        verifier_model: None,
        drafter_model: args.drafter_model.clone(),
        ctx_size: args.ctx_size,
        threads: args.threads,
        kv_cache: Default::default(),
    };
    let (kind, diffusion) = (args.drafter, args.diffusion.clone());
    let load = Box::new(move || -> Result<Box<dyn DrafterFactory>, String> {
        let mut drafters = ModelDrafters { diffusion: None, ar_model: None, default: kind };
        match kind {
            DrafterKind::Ngram => {}
            DrafterKind::Diffusion => {
                let model = diffusion.load_model().map_err(|e| format!("{e:#}"))?;
                let description = diffusion.checkpoint_path().display().to_string();
                drafters.diffusion = Some(DiffusionSetup { model, sampler, hints: diffusion.draft_hints, description });
            }
            DrafterKind::ArModel => {
                drafters.ar_model = Some(models.load_drafter_model(1).map_err(|e| format!("{e:#}"))?);
            }
        }
        Ok(Box::new(drafters))
    });

    let rt = runtime()?;
    rt.block_on(async move {
        let (ready_tx, ready_rx) = oneshot::channel();
        let service = DrafterService::start(load, config, ready_tx).context("starting the drafter thread")?;
        let server = GrpcServer::new().await?.add_service(service.into_server()).await;
        let health = server.health();
        let listener = bind(args.listen, "drafter service").await?;
        let (fatal_tx, fatal_rx) = oneshot::channel();
        tokio::spawn(async move {
            match ready_rx.await {
                Ok(Ok(())) => {
                    eprintln!("duet: drafter ready ({})", kind_label(kind));
                    health.set_serving().await;
                }
                Ok(Err(e)) => {
                    let _ = fatal_tx.send(anyhow::anyhow!("loading the drafter: {e}"));
                }
                Err(_) => {
                    let _ = fatal_tx.send(anyhow::anyhow!("the drafter thread stopped while loading"));
                }
            }
        });
        serve_until_shutdown(server, listener, args.serve.drain(), fatal_rx).await
    })
}

fn kind_label(kind: DrafterKind) -> &'static str {
    crate::grpc::drafter_factory::kind_name(kind)
}
