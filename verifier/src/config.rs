//! Verifier configuration: which model, how much context, how many threads.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Default per-session context length in tokens.
pub const DEFAULT_CTX_SIZE: u32 = 4096;
/// Default number of sessions one verifier serves at once.
pub const DEFAULT_MAX_SESSIONS: u32 = 4;
/// Most sessions one verifier can hold.
pub const MAX_SESSIONS: u32 = 64;
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
    /// Element type of the KV cache.
    pub kv_cache: KvCacheKind,
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
            kv_cache: KvCacheKind::default(),
        }
    }
}

/// All cores of the machine: decoding is bound by memory bandwidth and a batch by compute, and both
/// gain from every core on a small CPU.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(2)
}

/// Element types of the KV cache (keys, values).
///
/// The default, Q8_0 keys with F16 values, keeps greedy hybrid output bit-identical to verifier-only
/// output at every context length and block size. llama.cpp's CPU flash attention has two fast paths
/// that compute a query row differently from its plain per-row kernel, and takes them only when
/// keys and values have the same F16/F32 type: a one-row call (a plain decode step) over more than
/// 256 cached tokens splits the KV range across threads and merges partial softmax sums, and a call
/// of 64 rows or more uses a tiled kernel. With an all-F16 cache a token therefore gets other
/// logits in a plain step than inside a verification block once a session holds more than 256
/// tokens. Different key and value types always take the per-row kernel. Measured on the 1.5B
/// (2 threads; `duet models costs`): Q8_0/F16 decodes and verifies as fast as F16 at 300 and 1000
/// tokens of context, evaluates a 1000-token prompt ~6% slower (no tiled kernel) and holds 25% less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheKind {
    /// Q8_0 keys (8-bit blocks, one scale per 32 values) and F16 values: batch-invariant everywhere.
    #[default]
    Q8KeysF16Values,
    /// Q8_0 keys and values: batch-invariant everywhere and half of F16's memory, but attention
    /// over long contexts is ~10% slower (every value row is dequantised per query row).
    Q8_0,
    /// F16 keys and values, llama.cpp's default: bit-exact between steps and blocks only below 257
    /// cached tokens and for blocks under 64 rows.
    F16,
}

impl fmt::Display for KvCacheKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvCacheKind::Q8KeysF16Values => "q8_0-f16",
            KvCacheKind::Q8_0 => "q8_0",
            KvCacheKind::F16 => "f16",
        })
    }
}

impl FromStr for KvCacheKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0-f16" => Ok(KvCacheKind::Q8KeysF16Values),
            "q8_0" => Ok(KvCacheKind::Q8_0),
            "f16" => Ok(KvCacheKind::F16),
            _ => Err(format!("KV cache type must be `q8_0-f16` (keys-values), `q8_0` or `f16`, got `{s}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_kinds_parse_from_their_names_and_print_back() {
        for kind in [KvCacheKind::Q8KeysF16Values, KvCacheKind::Q8_0, KvCacheKind::F16] {
            assert_eq!(kind.to_string().parse::<KvCacheKind>(), Ok(kind));
        }
        assert_eq!("Q8_0".parse::<KvCacheKind>(), Ok(KvCacheKind::Q8_0));
        let err = "q4".parse::<KvCacheKind>().unwrap_err();
        assert!(err.contains("`q8_0-f16`") && err.contains("`f16`") && err.contains("q4"), "{err}");
    }
}
