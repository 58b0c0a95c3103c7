//! `duet verifier serve`: the verifier model as a gRPC service of its own (`duet.v1.Verifier`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use duet_verifier::Verifier;
use tokio::sync::oneshot;

use super::grpc_common::{ServeArgs, bind, runtime, serve_until_shutdown};
use super::options::ModelArgs;
use crate::grpc::{GrpcServer, VerifierService, VerifierServiceConfig};

/// `duet verifier ...`
#[derive(Debug, Subcommand)]
pub enum VerifierCommand {
    /// Serve the verifier model over gRPC (`duet.v1.Verifier`) for `duet orchestrator serve`.
    Serve(VerifierServeArgs),
}

/// Flags of `duet verifier serve`.
#[derive(Debug, Args)]
pub struct VerifierServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stderr).
    #[arg(long, env = "DUET_VERIFIER_LISTEN", default_value = "127.0.0.1:50062")]
    pub listen: SocketAddr,
    /// Sessions served at once, each with its own KV cache of --ctx-size tokens; one more gets
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = duet_verifier::config::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: u32,
    /// Return the verifier's hidden states with every verdict, for a diffusion drafter conditioned
    /// on them (costs about 15% of prompt evaluation).
    #[arg(long)]
    pub features: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// Runs `duet verifier ...`.
pub fn run(command: VerifierCommand) -> anyhow::Result<()> {
    match command {
        VerifierCommand::Serve(args) => serve(args),
    }
}

fn serve(args: VerifierServeArgs) -> anyhow::Result<()> {
    let mut config = VerifierServiceConfig {
        idle_timeout: args.serve.idle_timeout()?,
        max_sessions: args.max_sessions,
        features: args.features,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let service = VerifierService::new(config.clone());
        let server = GrpcServer::new().await?.add_service(service.clone().into_server()).await;
        let health = server.health();
        let listener = bind(args.listen, "verifier service").await?;

        // Health answers NOT_SERVING (and calls UNAVAILABLE) while the model loads.
        let (fatal_tx, fatal_rx) = oneshot::channel();
        let (models, max_sessions, features) = (args.models.clone(), args.max_sessions, args.features);
        let loader = service.clone();
        tokio::spawn(async move {
            let loaded: anyhow::Result<Verifier> =
                tokio::task::spawn_blocking(move || models.load_verifier(max_sessions, features))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("the loading thread failed: {e}")));
            match loaded {
                Ok(v) => {
                    let i = v.info();
                    eprintln!("duet: verifier {} ({}) loaded in {:.1}s", i.description, i.path.display(), i.load_s);
                    loader.loaded(v);
                    health.set_serving().await;
                }
                Err(e) => {
                    let _ = fatal_tx.send(e);
                }
            }
        });
        let reaper = service.clone();
        config.idle_timeout = config.idle_timeout.min(Duration::from_secs(3600));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((config.idle_timeout / 4).max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                let r = reaper.clone();
                let _ = tokio::task::spawn_blocking(move || r.reap_idle()).await;
            }
        });
        serve_until_shutdown(server, listener, args.serve.drain(), fatal_rx).await.context("verifier service")
    })
}
