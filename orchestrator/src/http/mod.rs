//! The OpenAI-compatible HTTP server of `duet serve` (axum): `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions` (JSON or server-sent events), `/health` and `/metrics`. Requests become
//! [`crate::service`] requests; this layer only translates, authenticates and counts.

mod auth;
mod error;
mod handlers;
pub mod metrics;
pub(crate) mod request;
mod response;
mod stream;

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;
pub use request::COMPLETIONS_DEFAULT_MAX_TOKENS;

use crate::service::GenerationService;

/// Default largest request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 << 20;

/// What every handler shares. The service is set once the models have loaded; until then the
/// generation routes and `/health` answer 503.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    service: OnceLock<GenerationService>,
    api_keys: Vec<String>,
    prometheus: Option<PrometheusHandle>,
    max_body_bytes: usize,
    created: u64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("ready", &self.inner.service.get().is_some()).finish()
    }
}

impl AppState {
    /// A server with these API keys (none: no authentication), metrics and body limit.
    pub fn new(api_keys: Vec<String>, prometheus: Option<PrometheusHandle>, max_body_bytes: usize) -> Self {
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        Self {
            inner: Arc::new(StateInner { service: OnceLock::new(), api_keys, prometheus, max_body_bytes, created }),
        }
    }

    /// Makes the server ready: the models are loaded.
    pub fn set_service(&self, service: GenerationService) {
        let _ = self.inner.service.set(service);
    }

    /// The service, or 503 while the models load.
    fn service(&self) -> Result<&GenerationService, ApiError> {
        self.inner.service.get().ok_or_else(|| ApiError::unavailable("the models are still loading; retry shortly"))
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/models", get(handlers::models))
        .route("/v1/models/{id}", get(handlers::model))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn(metrics::count_requests))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod validation_tests;
