//! Verifier configuration: which model, how much context, how many threads.

use std::path::PathBuf;
use std::time::Duration;

/// Default per-session context length in tokens.
pub const DEFAULT_CTX_SIZE: u32 = 4096;
/// Default number of sessions one verifier serves at once.
pub const DEFAULT_MAX_SESSIONS: u32 = 4;
/// How long the verifier thread waits for other sessions' blocks to share a decode call.
pub const DEFAULT_GATHER_WINDOW: Duration = Duration::from_millis(2);
/// Largest batch one decode call may hold: prompt chunks and verification blocks.
pub const DEFAULT_BATCH_SIZE: u32 = 512;

/// How to load the verifier model.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Path of the GGUF model file.
    pub model_path: PathBuf,
    /// Context length of every session, in tokens (prompt plus generated).
    pub ctx_size: u32,
    /// Sessions served at once; each gets its own KV cache stream of `ctx_size` tokens.
    pub max_sessions: u32,
    /// CPU threads for decoding (llama.cpp's `n_threads` and `n_threads_batch`).
    pub threads: u32,
    /// Largest number of tokens in one decode call.
    pub batch_size: u32,
    /// Return the verifier's final hidden state (after the output norm) for every token it keeps,
    /// as features for a target-conditioned drafter. Makes every token of a batch an output, which
    /// adds the output layer's cost to prompt evaluation (about 15% on the Qwen models).
    pub features: bool,
    /// After taking a session's block, how long to wait for the blocks of other open sessions so
    /// they share one decode call. Only waited while other sessions are open; zero still joins
    /// blocks that are already queued.
    pub gather_window: Duration,
}

impl VerifierConfig {
    /// A configuration with Duet's defaults for the given model file.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            ctx_size: DEFAULT_CTX_SIZE,
            max_sessions: DEFAULT_MAX_SESSIONS,
            threads: default_threads(),
            batch_size: DEFAULT_BATCH_SIZE,
            features: false,
            gather_window: DEFAULT_GATHER_WINDOW,
        }
    }
}

/// All cores of the machine: decoding is bound by memory bandwidth and a batch by compute, and both
/// gain from every core on a small CPU.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(2)
}
