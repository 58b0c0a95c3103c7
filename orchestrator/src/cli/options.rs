//! Flags shared by the subcommands that load models.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use duet_verifier::{Verifier, VerifierConfig};

/// File name of the default verifier in the models directory.
pub const DEFAULT_VERIFIER_FILE: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
/// File name of the small Qwen model (tests; AR drafter for the 1.5B).
pub const SMALL_MODEL_FILE: &str = "qwen2.5-coder-0.5b-instruct.gguf";

/// The models directory: `$DUET_MODELS_DIR`, else `models/` under the current directory.
pub fn default_models_dir() -> PathBuf {
    std::env::var_os("DUET_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"))
}

/// Where the verifier (and an optional drafting model) come from and how they run.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Verifier GGUF file [default: <models dir>/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf].
    #[arg(long, env = "DUET_VERIFIER_MODEL")]
    pub verifier_model: Option<PathBuf>,
    /// GGUF file of a small model of the same vocabulary, for `--drafter ar-model`
    /// [default: <models dir>/qwen2.5-coder-0.5b-instruct.gguf].
    #[arg(long, env = "DUET_DRAFTER_MODEL")]
    pub drafter_model: Option<PathBuf>,
    /// Context length per session, in tokens (prompt plus generated).
    #[arg(long, env = "DUET_CTX_SIZE", default_value_t = duet_verifier::config::DEFAULT_CTX_SIZE)]
    pub ctx_size: u32,
    /// CPU threads for the models [default: all cores].
    #[arg(long, env = "DUET_THREADS")]
    pub threads: Option<u32>,
}

impl ModelArgs {
    /// The verifier model path, defaulted.
    pub fn verifier_path(&self) -> PathBuf {
        self.verifier_model.clone().unwrap_or_else(|| default_models_dir().join(DEFAULT_VERIFIER_FILE))
    }

    /// The drafting model path, defaulted.
    pub fn drafter_path(&self) -> PathBuf {
        self.drafter_model.clone().unwrap_or_else(|| default_models_dir().join(SMALL_MODEL_FILE))
    }

    fn config(&self, path: PathBuf, max_sessions: u32) -> VerifierConfig {
        let mut cfg = VerifierConfig::new(path);
        cfg.ctx_size = self.ctx_size;
        cfg.max_sessions = max_sessions;
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg
    }

    /// Loads the verifier.
    pub fn load_verifier(&self, max_sessions: u32) -> anyhow::Result<Verifier> {
        let path = self.verifier_path();
        Verifier::load(self.config(path.clone(), max_sessions))
            .with_context(|| format!("loading the verifier from {}", path.display()))
    }

    /// Loads the small drafting model.
    pub fn load_drafter_model(&self, max_sessions: u32) -> anyhow::Result<Verifier> {
        let path = self.drafter_path();
        Verifier::load(self.config(path.clone(), max_sessions))
            .with_context(|| format!("loading the drafting model from {}", path.display()))
    }
}
