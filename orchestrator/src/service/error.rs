//! Errors a generation can end with, in terms every transport can map to its own status codes.

/// Why a request was refused or a generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or asks for something unsupported; the message names the field.
    /// HTTP 400, gRPC INVALID_ARGUMENT.
    #[error("{0}")]
    Invalid(String),
    /// The prompt (plus at least one token) does not fit the context. HTTP 400 with OpenAI's
    /// `context_length_exceeded` code, gRPC OUT_OF_RANGE.
    #[error("{0}")]
    ContextLength(String),
    /// Every session is busy and the queue is full: retry later. HTTP 429, gRPC RESOURCE_EXHAUSTED.
    #[error("server busy: {running} generations running and {queued} queued (limits {max_running} and {max_queued}); retry later")]
    Busy {
        /// Generations running.
        running: usize,
        /// Generations waiting for a session.
        queued: usize,
        /// Most generations that run at once.
        max_running: usize,
        /// Most generations that may wait.
        max_queued: usize,
    },
    /// The service cannot take requests (models still loading, shutting down). HTTP 503, gRPC
    /// UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
    /// The generation ran past its time limit (waiting in the queue included); what was generated
    /// until then has been sent. HTTP 504, gRPC DEADLINE_EXCEEDED.
    #[error("the request took longer than its limit of {} s (--request-timeout); the output so far was sent", .limit.as_secs_f64())]
    Timeout {
        /// The limit.
        limit: std::time::Duration,
    },
    /// The verifier or drafter failed. HTTP 500, gRPC INTERNAL.
    #[error("{0}")]
    Internal(String),
}

/// How long a client refused as busy should wait before retrying: about one short generation.
pub const RETRY_AFTER_S: u64 = 1;

impl ServiceError {
    /// Seconds a client should wait before it retries (HTTP `Retry-After`), for refusals that pass.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ServiceError::Busy { .. } => Some(RETRY_AFTER_S),
            _ => None,
        }
    }
}
