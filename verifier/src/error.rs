//! Errors at the verifier boundary.

use std::path::PathBuf;

/// Everything that can go wrong between a caller and the verifier thread.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// The model file does not exist.
    #[error("verifier model file {0} does not exist (run `duet models fetch` or pass --verifier-model)")]
    ModelMissing(PathBuf),
    /// llama.cpp could not load the model file.
    #[error("cannot load verifier model {path}: {reason} (is it a complete GGUF file?)")]
    ModelLoad {
        /// The file that failed to load.
        path: PathBuf,
        /// llama.cpp's reason.
        reason: String,
    },
    /// llama.cpp could not create a context.
    #[error("cannot create a llama.cpp context: {0}")]
    Context(String),
    /// A configuration value is out of range.
    #[error("invalid verifier configuration: {0}")]
    Config(String),
    /// The request does not fit the session's context.
    #[error("{what} needs {needed} tokens of context but the session holds {limit} (--ctx-size)")]
    ContextFull {
        /// What did not fit.
        what: &'static str,
        /// Tokens needed.
        needed: usize,
        /// The context length.
        limit: usize,
    },
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// All sessions are in use.
    #[error("all {0} verifier sessions are in use")]
    NoFreeSession(u32),
    /// A llama.cpp call failed.
    #[error("llama.cpp {op} failed: {reason}")]
    Backend {
        /// The failing operation.
        op: &'static str,
        /// llama.cpp's reason.
        reason: String,
    },
    /// The verifier thread has stopped.
    #[error("the verifier thread has stopped")]
    WorkerGone,
    /// A remote verifier does not answer (its process is down or unreachable); retry later.
    #[error("the verifier is not available: {0}")]
    Unavailable(String),
}
