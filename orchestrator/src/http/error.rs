//! Errors in OpenAI's JSON shape (`{"error": {"message", "type", "param", "code"}}`) with the status
//! the OpenAI clients expect.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::ServiceError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message; names the field at fault.
    pub message: String,
    /// OpenAI's error type.
    pub kind: &'static str,
    /// The request field at fault, if known.
    pub param: Option<String>,
    /// OpenAI's error code, if any.
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying (the `Retry-After` header), for refusals that pass.
    pub retry_after_s: Option<u64>,
}

/// The JSON body.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ErrorObject<'a>,
}

/// OpenAI's error object.
#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    /// What went wrong.
    pub message: &'a str,
    /// Error type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Field at fault.
    pub param: Option<&'a str>,
    /// Error code.
    pub code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self { status, param: field_in(&message), message, kind, code: None, retry_after_s: None }
    }

    /// 400: the request asks for something invalid or unsupported.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 422: a field has the wrong type.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", message)
    }

    /// 401: no or a wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { code: Some("invalid_api_key"), ..Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message) }
    }

    /// 404: no such model or route.
    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        Self { code: Some(code), param: None, ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message) }
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            param: None,
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than {limit} bytes (--max-body-bytes)"),
            )
        }
    }

    /// 503: not ready.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { code: Some("service_unavailable"), param: None, ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message) }
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { param: None, ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message) }
    }

    /// The same error naming `param` as the field at fault (a field name the client chose may hold
    /// characters the message scan does not take for a field).
    pub fn with_param(self, param: impl Into<String>) -> Self {
        Self { param: Some(param.into()), ..self }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorObject { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code },
        }
    }
}

/// The field a message names: the first `backticked` word.
fn field_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let field = &message[start..start + len];
    let plain = !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c));
    plain.then(|| field.to_owned())
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => Self::invalid(message),
            ServiceError::ContextLength(_) => {
                Self { code: Some("context_length_exceeded"), param: None, ..Self::invalid(message) }
            }
            ServiceError::Busy { .. } => Self {
                code: Some("server_busy"),
                param: None,
                retry_after_s: e.retry_after_s(),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            ServiceError::Timeout { .. } => Self {
                code: Some("timeout"),
                param: None,
                ..Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message)
            },
            ServiceError::Unavailable(_) => Self::unavailable(message),
            ServiceError::Internal(_) => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_param_is_the_first_backticked_field() {
        assert_eq!(ApiError::invalid("`temperature` > 0 is not supported yet").param.as_deref(), Some("temperature"));
        assert_eq!(ApiError::invalid("`messages[0].role` must be user").param.as_deref(), Some("messages[0].role"));
        assert_eq!(ApiError::invalid("no field here").param, None);
    }

    #[test]
    fn busy_maps_to_429() {
        let e = ApiError::from(ServiceError::Busy { running: 1, queued: 0, max_running: 1, max_queued: 0 });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let response = e.into_response();
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    }

    #[test]
    fn a_timeout_maps_to_504_without_retry_after() {
        let e = ApiError::from(ServiceError::Timeout { limit: std::time::Duration::from_secs(3) });
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(e.message.contains("3 s"), "{}", e.message);
        assert!(e.into_response().headers().get("retry-after").is_none());
    }
}
