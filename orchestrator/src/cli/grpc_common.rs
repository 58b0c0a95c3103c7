//! What the gRPC server subcommands share: the async runtime, binding the listen address (and
//! saying which port was bound, so `--listen 127.0.0.1:0` is usable), and serving until SIGTERM or
//! Ctrl-C — or until the model fails to load.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::grpc::server::{DEFAULT_DRAIN, GrpcServer};
use crate::grpc::shutdown_signal;

/// Flags every gRPC server has.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Seconds that calls in flight may still run after SIGTERM or Ctrl-C before the server stops.
    #[arg(long, default_value_t = DEFAULT_DRAIN.as_secs())]
    pub drain_timeout_s: u64,
    /// Seconds after which an unused session is freed (a client that vanished without closing it).
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_s: u64,
}

impl ServeArgs {
    /// The drain timeout.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s)
    }

    /// The idle-session timeout, checked.
    pub fn idle_timeout(&self) -> anyhow::Result<Duration> {
        anyhow::ensure!(self.idle_timeout_s > 0, "`--idle-timeout-s` must be at least 1, got 0");
        Ok(Duration::from_secs(self.idle_timeout_s))
    }
}

/// A multi-threaded runtime for the network side; models run on their own threads.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("duet-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Binds `addr` and prints the bound address on stderr as
/// `duet: <what> listening on <addr>` (tests and scripts read the port from it).
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding --listen {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    eprintln!("duet: {what} listening on {local}");
    Ok(listener)
}

/// Serves until SIGTERM / Ctrl-C (then drains) or until `fatal` reports an error (a model that
/// failed to load), which is returned.
pub async fn serve_until_shutdown(
    server: GrpcServer,
    listener: TcpListener,
    drain: Duration,
    fatal: oneshot::Receiver<anyhow::Error>,
) -> anyhow::Result<()> {
    let (fatal_tx, mut fatal_seen) = oneshot::channel();
    let shutdown = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            Ok(e) = fatal => {
                let _ = fatal_tx.send(e);
            }
        }
    };
    server.serve(listener, shutdown, drain).await.context("serving gRPC")?;
    match fatal_seen.try_recv() {
        Ok(e) => Err(e),
        Err(_) => Ok(()),
    }
}
