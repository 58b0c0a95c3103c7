//! Optional API keys: `Authorization: Bearer <key>` on every `/v1` route when keys are configured.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Lets the request through when no keys are configured or it carries one of them.
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let keys = &state.inner.api_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match given {
        None => ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>`").into_response(),
        Some(k) if keys.iter().any(|key| same(key.as_bytes(), k.as_bytes())) => next.run(request).await,
        Some(_) => ApiError::unauthorized("incorrect API key").into_response(),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
