//! The Prometheus exporter of `duet serve` and the per-route request counter.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::service::metrics as m;

/// HTTP requests answered (counter, by route and status).
pub const HTTP_REQUESTS: &str = "duet_http_requests_total";
/// Time to answer an HTTP request (until the headers; streams run on), in seconds (histogram).
pub const HTTP_REQUEST_DURATION: &str = "duet_http_request_duration_seconds";

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), m::SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(m::ACCEPTED_LENGTH.into()), m::TOKENS_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(m::DRAFT_LENGTH.into()), m::TOKENS_BUCKETS))
                .and_then(|b| b.install_recorder())
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))
        })
        .clone()
}

/// Counts every request by its route pattern and status.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route).record(started.elapsed().as_secs_f64());
    response
}
