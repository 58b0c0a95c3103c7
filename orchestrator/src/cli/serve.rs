//! `duet serve`: every model in one process behind the OpenAI-compatible HTTP server and the gRPC
//! orchestrator service (`duet.v1.Orchestrator`, with health and reflection), both over one
//! generation service, so HTTP and gRPC requests share the sessions and the queue. SIGTERM or
//! Ctrl-C stops both: no new requests, answers in flight finish.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use super::generate::DraftLength;
use super::options::{DiffusionArgs, ModelArgs};
use crate::drafters::DrafterKind;
use crate::engine::{DraftPolicy, MAX_BLOCK_SIZE, Mode};
use crate::grpc::server::DEFAULT_DRAIN;
use crate::grpc::{GrpcServer, OrchestratorService};
use crate::http::{self, AppState, DEFAULT_MAX_BODY_BYTES};
use crate::service::{DiffusionSetup, GenerationService, Models, ServiceConfig};

/// Flags of `duet serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the OpenAI-compatible HTTP server (port 0: any free port; the chosen address is printed).
    #[arg(long, env = "DUET_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Address of the gRPC orchestrator service (`duet.v1.Orchestrator`, health, reflection), or
    /// `off`. Port 0: any free port (the chosen address is printed). gRPC has no API keys: a
    /// non-loopback address needs --allow-unauthenticated.
    #[arg(long, env = "DUET_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: GrpcListen,
    /// API keys clients must send as `Authorization: Bearer <key>` (comma-separated). Without one the
    /// server listens on loopback addresses only, unless --allow-unauthenticated.
    #[arg(long, env = "DUET_API_KEY", value_delimiter = ',', hide_env_values = true)]
    pub api_key: Vec<String>,
    /// Serve without API keys on a non-loopback address.
    #[arg(long, env = "DUET_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// The model name clients use [default: the verifier's file name without `.gguf`].
    #[arg(long, env = "DUET_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Generations that run at once (each holds a verifier session with its own KV cache).
    #[arg(long, env = "DUET_MAX_SESSIONS", default_value_t = duet_verifier::config::DEFAULT_MAX_SESSIONS as usize)]
    pub max_sessions: usize,
    /// Requests that may wait for a session; beyond that the server answers 429.
    #[arg(long, env = "DUET_MAX_QUEUED", default_value_t = 32)]
    pub max_queued: usize,
    /// Drafters to load (comma-separated): requests may choose any of them. `diffusion` loads
    /// --drafter-checkpoint, `ar-model` loads --drafter-model.
    #[arg(long, env = "DUET_DRAFTERS", value_enum, value_delimiter = ',', default_value = "ngram,diffusion")]
    pub drafters: Vec<DrafterKind>,
    /// Mode of requests that do not choose one (`mode` field).
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    pub mode: Mode,
    /// Drafter of hybrid requests that do not choose one (`drafter` field).
    #[arg(long, value_enum, default_value_t = DrafterKind::Ngram)]
    pub drafter: DrafterKind,
    /// Block size of requests that do not choose one (`block_size` field), 1 to 256.
    #[arg(long, default_value_t = 8)]
    pub block_size: usize,
    /// Longest one request may take, queueing included, in seconds (0: no limit); a longer one is
    /// stopped with 504 / DEADLINE_EXCEEDED after the output so far.
    #[arg(long, env = "DUET_REQUEST_TIMEOUT", default_value_t = crate::service::DEFAULT_REQUEST_TIMEOUT.as_secs())]
    pub request_timeout: u64,
    /// How hybrid rounds pick their draft length: `cost-aware` measures the verifier's cost curve at
    /// start-up (cached per model, threads and context) and sends the length with the most expected
    /// tokens per unit of time, none when a plain step pays better; `fixed` sends every draft.
    #[arg(long, value_enum, env = "DUET_DRAFT_LENGTH", default_value_t = DraftLength::CostAware)]
    pub draft_length: DraftLength,
    /// Largest request body in bytes (larger ones get 413).
    #[arg(long, env = "DUET_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

/// The most sessions the verifier can hold.
const MAX_SESSIONS: usize = duet_verifier::config::MAX_SESSIONS as usize;

impl ServeArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.max_sessions == 0 || self.max_sessions > MAX_SESSIONS {
            bail!("--max-sessions must be between 1 and {MAX_SESSIONS}, got {}", self.max_sessions);
        }
        if !(1..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            bail!("--block-size must be between 1 and {MAX_BLOCK_SIZE}, got {}", self.block_size);
        }
        let default_drafter = match self.mode {
            Mode::Ar => None,
            Mode::Hybrid => Some(self.drafter),
            Mode::Diffusion => Some(DrafterKind::Diffusion),
        };
        if let Some(d) = default_drafter.filter(|d| !self.drafters.contains(d)) {
            bail!("the default drafter `{}` is not among --drafters; add it there", label(d));
        }
        if self.api_key.iter().any(|k| k.trim().is_empty()) {
            bail!("--api-key / DUET_API_KEY holds an empty key");
        }
        if let GrpcListen(Some(addr)) = self.grpc_listen
            && !addr.ip().is_loopback()
            && !self.allow_unauthenticated
        {
            bail!(
                "--grpc-listen {addr} is not a loopback address and the gRPC service takes no API keys: \
                 pass --allow-unauthenticated to serve it there, or --grpc-listen off"
            );
        }
        if self.api_key.is_empty() && !self.http_listen.ip().is_loopback() && !self.allow_unauthenticated {
            bail!(
                "--http-listen {} is not a loopback address and no API key is set: pass --api-key (or DUET_API_KEY), \
                 or --allow-unauthenticated to serve without keys",
                self.http_listen
            );
        }
        Ok(())
    }
}

/// `--grpc-listen`: an address, or `off` for no gRPC service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcListen(pub Option<SocketAddr>);

impl std::str::FromStr for GrpcListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a))).map_err(|e| format!("`{s}` is neither an address like 127.0.0.1:50051 nor `off`: {e}"))
    }
}

fn label(d: DrafterKind) -> &'static str {
    match d {
        DrafterKind::Diffusion => "diffusion",
        DrafterKind::Ngram => "ngram",
        DrafterKind::ArModel => "ar-model",
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.check()?;
    let prometheus = http::metrics::prometheus().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("duet-async")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, prometheus))
}

async fn serve(args: ServeArgs, prometheus: metrics_exporter_prometheus::PrometheusHandle) -> anyhow::Result<()> {
    let started = Instant::now();
    let state = AppState::new(args.api_key.clone(), Some(prometheus.clone()), args.max_body_bytes);
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("listening on --http-listen {}", args.http_listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let auth = if args.api_key.is_empty() { "no API key" } else { "API key required" };
    eprintln!("duet: HTTP (OpenAI-compatible) listening on http://{addr}/v1 ({auth}; /health, /metrics)");

    // One shutdown signal for both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // The gRPC side answers UNAVAILABLE (health NOT_SERVING) until the models are loaded.
    let orchestrator = OrchestratorService::new();
    let grpc = match args.grpc_listen.0 {
        Some(grpc_addr) => {
            let server = GrpcServer::new().await?.add_service(orchestrator.clone().into_server()).await;
            let health = server.health();
            let listener = tokio::net::TcpListener::bind(grpc_addr)
                .await
                .with_context(|| format!("listening on --grpc-listen {grpc_addr}"))?;
            let bound = listener.local_addr().context("reading the bound gRPC address")?;
            eprintln!("duet: gRPC (duet.v1.Orchestrator, health, reflection) listening on {bound} (no API key)");
            Some((server, listener, health))
        }
        None => None,
    };
    let grpc_health = grpc.as_ref().map(|(_, _, h)| h.clone());
    let grpc_server = async {
        match grpc {
            Some((server, listener, _)) => server.serve(listener, stopped(stop_rx.clone()), DEFAULT_DRAIN).await,
            None => Ok(()),
        }
    };

    // Histograms are drained into their buckets at every scrape; this keeps memory flat between
    // scrapes too.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            prometheus.run_upkeep();
        }
    });

    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let load_args = args.clone();
    std::thread::Builder::new()
        .name("duet-load".into())
        .spawn(move || {
            let _ = loaded_tx.send(load(&load_args));
        })
        .context("starting the model loading thread")?;

    let http_server = axum::serve(listener, http::router(state.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future();
    let servers = async {
        let (h, g) = tokio::join!(http_server, grpc_server);
        h.context("serving HTTP")?;
        g.context("serving gRPC")
    };
    let loading = async {
        let service = loaded_rx.await.map_err(|_| anyhow::anyhow!("the model loading thread stopped"))??;
        let cfg = service.config();
        eprintln!(
            "duet: ready in {:.1}s: model `{}` on http://{addr}/v1, drafters {}, default mode {:?}, \
             up to {} generations at once and {} queued",
            started.elapsed().as_secs_f64(),
            service.model_name(),
            args.drafters.iter().map(|d| label(*d)).collect::<Vec<_>>().join(", "),
            cfg.mode,
            cfg.max_running,
            cfg.max_queued,
        );
        orchestrator.ready(service.clone());
        state.set_service(service);
        if let Some(h) = &grpc_health
            && !*stop_rx.borrow()
        {
            h.set_serving().await;
        }
        std::future::pending::<anyhow::Result<()>>().await
    };
    tokio::select! {
        r = servers => r,
        r = loading => r,
    }
}

/// Loads the verifier and the drafters named by --drafters and starts the generation threads.
fn load(args: &ServeArgs) -> anyhow::Result<GenerationService> {
    let diffusion = if args.drafters.contains(&DrafterKind::Diffusion) {
        let t = Instant::now();
        let model = args.diffusion.load_model()?;
        eprintln!(
            "duet: diffusion drafter {} loaded in {:.1}s",
            args.diffusion.checkpoint_path().display(),
            t.elapsed().as_secs_f64()
        );
        Some(DiffusionSetup { model, sampler: args.diffusion.sampler()?, hints: args.diffusion.draft_hints })
    } else {
        None
    };
    let conditioned = diffusion.as_ref().is_some_and(|d| d.model.feature_dim().is_some());
    let sessions = args.max_sessions as u32;
    let verifier = args.models.load_verifier(sessions, conditioned)?;
    let info = verifier.info();
    eprintln!("duet: verifier {} ({}) loaded in {:.1}s", info.description, info.path.display(), info.load_s);
    let drafting = if args.drafters.contains(&DrafterKind::ArModel) {
        let m = args.models.load_drafter_model(sessions)?;
        eprintln!("duet: drafting model {} ({}) loaded in {:.1}s", m.info().description, m.info().path.display(), m.info().load_s);
        Some(m)
    } else {
        None
    };
    let draft_policy = match args.draft_length {
        DraftLength::Fixed => DraftPolicy::Fixed,
        DraftLength::CostAware => DraftPolicy::CostAware(serve_cost_curve(args, &verifier)?),
    };
    let name = args.served_model_name.clone().unwrap_or_else(|| model_name(&info.path));
    let models = Models::new(verifier, name, drafting, diffusion).context("pairing the drafters with the verifier")?;
    if !models.has_fim() {
        eprintln!("duet: the verifier has no FIM tokens: `suffix` requests will be refused");
    }
    let config = ServiceConfig {
        max_running: args.max_sessions,
        max_queued: args.max_queued,
        mode: args.mode,
        drafter: args.drafter,
        block_size: args.block_size,
        request_timeout: (args.request_timeout > 0).then(|| std::time::Duration::from_secs(args.request_timeout)),
        draft_policy,
    };
    Ok(GenerationService::start(Arc::new(models), config)?)
}

/// The verifier's cost curve for drafts up to the largest block, at a context of 256 tokens: from the
/// cache, else measured now (a second or two). Every request drafts by it, whatever its length.
fn serve_cost_curve(args: &ServeArgs, verifier: &duet_verifier::Verifier) -> anyhow::Result<crate::engine::CostCurve> {
    let one = verifier.tokenize(crate::costs::SERVE_CONTEXT, false).context("tokenizing the cost-curve context")?;
    let context = crate::costs::serve_context(&one, verifier.info().ctx_size);
    let threads = args.models.threads.unwrap_or_else(duet_verifier::config::default_threads);
    let cache = crate::costs::default_cache_path();
    let max_len = crate::costs::serve_max_len(args.block_size, verifier.info().ctx_size);
    let (curve, measured) = crate::costs::cost_curve(verifier, &context, max_len, threads, cache.as_deref(), false)?;
    eprintln!(
        "duet: verify cost curve{} (step {:.1} ms): c(k) = {}",
        if measured { " measured" } else { " from the cache" },
        curve.step_s * 1e3,
        curve.costs.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" ")
    );
    Ok(curve)
}

/// The verifier's file name without `.gguf`.
fn model_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "duet".into())
}

/// Ctrl-C or SIGTERM: stop accepting, finish the answers in flight.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("duet: shutting down");
}
