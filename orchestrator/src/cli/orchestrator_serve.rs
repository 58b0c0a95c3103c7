//! `duet orchestrator serve`: the speculative engine as a gRPC service (`duet.v1.Orchestrator`)
//! over a drafter service and one or more verifier replicas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio::sync::oneshot;

use super::generate::DraftLength;
use super::grpc_common::{bind, runtime, serve_until_shutdown};
use crate::drafters::DrafterKind;
use crate::engine::{DraftPolicy, Mode};
use crate::http::{self, AppState, DEFAULT_MAX_BODY_BYTES};
use crate::grpc::orchestrator_service::OrchestratorService;
use crate::grpc::remote_backend::{PROBE_EVERY, RemoteBackend, watch_verifiers};
use crate::grpc::server::DEFAULT_DRAIN;
use crate::grpc::verifier_client::{ConnectError, DEFAULT_VERIFIER_TIMEOUT};
use crate::grpc::{GrpcServer, RemoteDrafterService, RemoteVerifiers};
use crate::service::{GenerationService, ServiceConfig};

/// `duet orchestrator ...`
#[derive(Debug, Subcommand)]
pub enum OrchestratorCommand {
    /// Serve generations over gRPC (`duet.v1.Orchestrator`), drafting on a drafter service and
    /// verifying on verifier services.
    Serve(OrchestratorServeArgs),
}

/// Flags of `duet orchestrator serve`.
#[derive(Debug, Args)]
pub struct OrchestratorServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stderr).
    #[arg(long, env = "DUET_ORCHESTRATOR_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// URL of the drafter service (`duet drafter serve`), e.g. http://127.0.0.1:50061.
    #[arg(long = "drafter", env = "DUET_DRAFTER_URL")]
    pub drafter_url: String,
    /// URL of a verifier service (`duet verifier serve`); repeat for several replicas: sessions are
    /// spread over them and each stays on its own.
    #[arg(long = "verifier", env = "DUET_VERIFIER_URLS", value_delimiter = ',', required = true)]
    pub verifier_urls: Vec<String>,
    /// Generations that run at once [default: the verifier replicas' sessions together].
    #[arg(long)]
    pub max_running: Option<usize>,
    /// Generations that may wait; beyond them requests get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 32)]
    pub max_queued: usize,
    /// Longest one request may take, queueing included, in seconds (0: no limit); a longer one is
    /// stopped with 504 / DEADLINE_EXCEEDED after the output so far.
    #[arg(long, env = "DUET_REQUEST_TIMEOUT", default_value_t = crate::service::DEFAULT_REQUEST_TIMEOUT.as_secs())]
    pub request_timeout: u64,
    /// Mode of requests that name none.
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    pub mode: Mode,
    /// Drafter of hybrid requests that name none.
    #[arg(long, value_enum, default_value_t = DrafterKind::Ngram)]
    pub default_drafter: DrafterKind,
    /// Draft tokens per round of requests that name none (1 to 256).
    #[arg(long, default_value_t = 8)]
    pub block_size: usize,
    /// How hybrid rounds pick their draft length, as in `duet serve`: `cost-aware` asks a verifier
    /// to measure its cost curve at start-up (`MeasureCosts`, a second or two on a small CPU) and
    /// sends the length with the most expected tokens per unit of time, none when a plain step
    /// pays better; `fixed` sends every draft. A verifier that cannot measure (an older one, or
    /// every session slot taken) leaves the fixed length, with a warning.
    #[arg(long, value_enum, env = "DUET_DRAFT_LENGTH", default_value_t = DraftLength::CostAware)]
    pub draft_length: DraftLength,
    /// Milliseconds a draft call may take before the round goes on as a plain verifier step; after a
    /// failed or late call every generation leaves the drafter alone for a back-off window (0.5 s,
    /// doubling to 10 s) and takes plain verifier steps (same output), then tries it again.
    #[arg(long, env = "DUET_DRAFTER_TIMEOUT_MS", default_value_t = 2000)]
    pub drafter_timeout_ms: u64,
    /// Seconds a verifier call (a whole prompt included) may take.
    #[arg(long, default_value_t = DEFAULT_VERIFIER_TIMEOUT.as_secs())]
    pub verifier_timeout_s: u64,
    /// Also serve the OpenAI-compatible HTTP API of `duet serve` (with `/health` and `/metrics`) on
    /// this address, over the same generation service. Port 0: any free port (printed).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// API keys HTTP clients must send as `Authorization: Bearer <key>` (comma-separated); without
    /// one, --http-listen must be a loopback address.
    #[arg(long, value_delimiter = ',')]
    pub api_key: Vec<String>,
    /// Seconds that generations in flight may still run after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = DEFAULT_DRAIN.as_secs())]
    pub drain_timeout_s: u64,
}

/// Runs `duet orchestrator ...`.
pub fn run(command: OrchestratorCommand) -> anyhow::Result<()> {
    match command {
        OrchestratorCommand::Serve(args) => serve(args),
    }
}

fn serve(args: OrchestratorServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.drafter_timeout_ms > 0, "`--drafter-timeout-ms` must be at least 1, got 0");
    anyhow::ensure!(args.verifier_timeout_s > 0, "`--verifier-timeout-s` must be at least 1, got 0");
    anyhow::ensure!(args.max_running != Some(0), "`--max-running` must be at least 1, got 0");
    anyhow::ensure!(!args.api_key.iter().any(|k| k.trim().is_empty()), "`--api-key` holds an empty key");
    if let Some(addr) = args.http_listen {
        anyhow::ensure!(
            addr.ip().is_loopback() || !args.api_key.is_empty(),
            "--http-listen {addr} is not a loopback address and no API key is set: pass --api-key"
        );
    }
    let rt = runtime()?;
    let handle = rt.handle().clone();
    rt.block_on(async move {
        let orchestrator = OrchestratorService::new();
        let server = GrpcServer::new().await?.add_service(orchestrator.clone().into_server()).await;
        let health = server.health();
        let listener = bind(args.listen, "orchestrator").await?;
        let (fatal_tx, fatal_rx) = oneshot::channel();
        let drain = Duration::from_secs(args.drain_timeout_s);
        let http = match args.http_listen {
            Some(addr) => Some(start_http(addr, args.api_key.clone()).await?),
            None => None,
        };
        let http_state = http.as_ref().map(|(state, _)| state.clone());
        tokio::spawn(async move {
            match connect(&args, handle).await {
                Ok((service, backend)) => {
                    eprintln!(
                        "duet: orchestrator ready (drafter {}, verifiers {})",
                        args.drafter_url,
                        args.verifier_urls.join(", ")
                    );
                    if let Some(state) = http_state {
                        state.set_service(service.clone());
                    }
                    orchestrator.ready(service);
                    // SERVING while a verifier answers, NOT_SERVING while none does.
                    watch_verifiers(backend, Some(health), PROBE_EVERY).await;
                }
                Err(e) => {
                    let _ = fatal_tx.send(e);
                }
            }
        });
        let served = serve_until_shutdown(server, listener, drain, fatal_rx).await;
        if let Some((_, task)) = http {
            // The HTTP server saw the same signal; let its answers in flight finish too.
            let _ = tokio::time::timeout(drain, task).await;
        }
        served
    })
}

/// Binds the HTTP API and serves it until SIGTERM / Ctrl-C; it answers 503 until the service is set.
async fn start_http(
    addr: SocketAddr,
    api_keys: Vec<String>,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let prometheus = http::metrics::prometheus().map_err(anyhow::Error::msg)?;
    let state = AppState::new(api_keys, Some(prometheus), DEFAULT_MAX_BODY_BYTES);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on --http-listen {addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    eprintln!("duet: HTTP (OpenAI-compatible) listening on http://{bound}/v1 (/health, /metrics)");
    let app = http::router(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(crate::grpc::shutdown_signal()).await
    });
    Ok((state, task))
}

/// Connects to the verifiers (waiting while they load) and the drafter, and starts the
/// generation service over them.
async fn connect(
    args: &OrchestratorServeArgs,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<(GenerationService, Arc<RemoteBackend>)> {
    let timeout = Duration::from_secs(args.verifier_timeout_s);
    let mut said = false;
    let verifiers = loop {
        match RemoteVerifiers::connect(&args.verifier_urls, rt.clone(), timeout).await {
            Ok(v) => break v,
            Err(ConnectError::Unavailable { url, status }) => {
                if !said {
                    eprintln!("duet: waiting for verifier {url} ({})", status.message());
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("connecting to the verifiers"),
        }
    };
    let max_running = args.max_running.unwrap_or(verifiers.total_sessions()).max(1);
    let draft_policy = match args.draft_length {
        DraftLength::Fixed => DraftPolicy::Fixed,
        DraftLength::CostAware => remote_cost_policy(&verifiers, args.block_size).await,
    };
    let drafter = RemoteDrafterService::new(&args.drafter_url, rt.clone(), Duration::from_millis(args.drafter_timeout_ms))
        .with_context(|| format!("bad drafter address {}", args.drafter_url))?;
    let backend = Arc::new(RemoteBackend::new(verifiers, drafter, rt).await.context("checking the verifiers")?);
    let config = ServiceConfig {
        max_running,
        max_queued: args.max_queued,
        mode: args.mode,
        drafter: args.default_drafter,
        block_size: args.block_size,
        request_timeout: (args.request_timeout > 0).then(|| std::time::Duration::from_secs(args.request_timeout)),
        draft_policy,
    };
    let service = GenerationService::start(backend.clone(), config).context("starting the generation threads")?;
    Ok((service, backend))
}

/// The cost-aware draft length over the curve a verifier measures where the model runs
/// (`MeasureCosts`), at the context and sizes `duet serve` measures at. Not cached here: the curve
/// depends on the verifier's machine, threads and load, which this process cannot key a cache by.
/// When no verifier can measure, the fixed length: drafting every proposal still serves, only
/// slower where the drafter misses.
async fn remote_cost_policy(verifiers: &RemoteVerifiers, block_size: usize) -> DraftPolicy {
    let ctx_size = verifiers.info().ctx_size;
    let sizes = crate::costs::measured_sizes(crate::costs::serve_max_len(block_size, ctx_size));
    let measured = match verifiers.tokenize(crate::costs::SERVE_CONTEXT, false).await {
        Ok(tokens) => verifiers.measure_costs(&crate::costs::serve_context(&tokens, ctx_size), &sizes, 0).await,
        Err(s) => Err(s),
    };
    match measured {
        Ok((url, curve)) => {
            eprintln!(
                "duet: verify cost curve measured on {url} (step {:.1} ms): c(k) = {}",
                curve.step_s * 1e3,
                curve.costs.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" ")
            );
            DraftPolicy::CostAware(curve)
        }
        Err(s) => {
            eprintln!(
                "duet: warning: no verifier measured its cost curve ({:?}: {}); drafting fixed lengths (--draft-length fixed)",
                s.code(),
                s.message()
            );
            DraftPolicy::Fixed
        }
    }
}
