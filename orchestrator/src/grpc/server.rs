//! What every Duet gRPC server shares: `grpc.health.v1` health (NOT_SERVING until the model has
//! loaded, and again while draining), server reflection (so `grpcurl` works without .proto files),
//! message size limits, and graceful shutdown — on the signal, health turns NOT_SERVING, the
//! listener closes, calls in flight finish, and after the drain timeout the server stops anyway.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Largest gRPC message Duet's servers and clients accept or send. Hidden states of a long prompt
/// are big: 4,096 tokens × 1,536 floats of the 1.5B model are 25 MB.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How long calls in flight may run after a shutdown signal by default.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// Errors of starting or running a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor sets.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A gRPC server under construction: health and reflection are already in it.
pub struct GrpcServer {
    routes: Routes,
    health: HealthReporter,
    /// Names of the services added, whose health follows the server's.
    services: Vec<&'static str>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer").field("services", &self.services).finish()
    }
}

impl GrpcServer {
    /// A server with health (every service NOT_SERVING until [`Health::set_serving`]) and
    /// reflection over `duet.v1` and `grpc.health.v1`.
    pub async fn new() -> Result<Self, ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // The overall status ("") starts SERVING in tonic-health; a model server is not ready yet.
        health.set_service_status("", ServingStatus::NotServing).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(duet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // Older grpcurl releases ask for v1alpha only.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(duet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let routes = Routes::new(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
        Ok(Self { routes, health, services: Vec::new() })
    }

    /// Adds a service; its health status is NOT_SERVING until [`Health::set_serving`].
    pub async fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Error = std::convert::Infallible,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.health.set_service_status(S::NAME, ServingStatus::NotServing).await;
        self.services.push(S::NAME);
        self.routes = self.routes.add_service(super::decode_errors::DecodeErrorsAreInvalid(svc));
        self
    }

    /// The handle that turns health SERVING once the model is loaded.
    pub fn health(&self) -> Health {
        Health { reporter: self.health.clone(), services: self.services.clone() }
    }

    /// Serves on `listener` until `shutdown` completes, then drains calls in flight for at most
    /// `drain` before returning.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
        drain: Duration,
    ) -> Result<(), ServeError> {
        let health = self.health();
        let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            tracing::info!(drain_s = drain.as_secs_f64(), "shutting down: draining calls in flight");
            health.set_not_serving().await;
            let _ = draining_tx.send(true);
        };
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
        let deadline = async {
            let _ = draining_rx.wait_for(|d| *d).await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            r = server => Ok(r?),
            () = deadline => {
                tracing::warn!("drain timeout: stopping with calls still in flight");
                Ok(())
            }
        }
    }
}

/// A server running in this process on a loopback port the OS picked (tests, benchmarks).
/// Dropping it shuts the server down.
#[derive(Debug)]
pub struct LocalServer {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl LocalServer {
    /// Binds 127.0.0.1:0 and serves `server` on the current runtime until stopped.
    pub async fn start(server: GrpcServer) -> std::io::Result<Self> {
        Self::start_at(server, "127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Binds `addr` (e.g. the address of a server that was stopped, to restart it in place) and
    /// serves `server` until stopped.
    pub async fn start_at(server: GrpcServer, addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(
            listener,
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(10),
        ));
        Ok(Self { addr, shutdown: Some(tx), task: Some(task) })
    }

    /// `http://` URL of the server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down gracefully (calls in flight finish) and waits for the server to stop.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.begin_shutdown();
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// Turns a server's health statuses SERVING or NOT_SERVING.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl Health {
    /// Every service and the server as a whole are ready.
    pub async fn set_serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Every service and the server as a whole refuse new work.
    pub async fn set_not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for s in &self.services {
            self.reporter.set_service_status(s, status).await;
        }
    }
}

/// Completes on Ctrl-C or SIGTERM: the one shutdown signal of a server process.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// The deadline a caller set with `grpc-timeout`, as an instant. tonic's server already stops a
/// unary call at its deadline; a server stream has to stop itself.
pub fn deadline<T>(request: &tonic::Request<T>) -> Option<tokio::time::Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value).map(|d| tokio::time::Instant::now() + d)
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("30u"), Some(Duration::from_micros(30)));
    }

    #[test]
    fn malformed_grpc_timeout_values_are_ignored() {
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
