//! Flags shared by the subcommands that load models.

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use duet_drafter::{DiffusionModel, SamplerConfig, Schedule};
use duet_verifier::{Verifier, VerifierConfig};

use crate::drafters::HintPolicy;

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
    /// Element types of the verifier's KV cache, keys-values: `q8_0-f16` and `q8_0` keep greedy
    /// hybrid output bit-identical to verifier-only output at every context length; `f16` only below
    /// 257 cached tokens and for blocks under 64 rows.
    #[arg(long, env = "DUET_KV_CACHE", default_value_t = duet_verifier::KvCacheKind::default())]
    pub kv_cache: duet_verifier::KvCacheKind,
}

/// Verifier settings and the flags that set them.
const MODEL_FLAGS: &[(&str, &str)] = &[("ctx_size", "--ctx-size"), ("threads", "--threads"), ("max_sessions", "--max-sessions")];

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
        cfg.features = false;
        cfg.ctx_size = self.ctx_size;
        cfg.max_sessions = max_sessions;
        cfg.kv_cache = self.kv_cache;
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg
    }

    /// Loads the verifier; with `features`, it returns hidden states for a conditioned drafter.
    pub fn load_verifier(&self, max_sessions: u32, features: bool) -> anyhow::Result<Verifier> {
        let path = self.verifier_path();
        let mut cfg = self.config(path.clone(), max_sessions);
        cfg.features = features;
        Verifier::load(cfg)
            .map_err(|e| match e {
                duet_verifier::VerifierError::Config(_) => super::flags::flag_error(e, MODEL_FLAGS),
                e => e.into(),
            })
            .with_context(|| format!("loading the verifier from {}", path.display()))
    }

    /// Loads the small drafting model.
    pub fn load_drafter_model(&self, max_sessions: u32) -> anyhow::Result<Verifier> {
        let path = self.drafter_path();
        Verifier::load(self.config(path.clone(), max_sessions))
            .with_context(|| format!("loading the drafting model from {}", path.display()))
    }
}

/// Where the diffusion drafter comes from and how it denoises.
#[derive(Debug, Clone, Args)]
pub struct DiffusionArgs {
    /// Diffusion drafter checkpoint folder (config.json + model.safetensors)
    /// [default: drafter/checkpoints/default, the one shipped in the repository].
    #[arg(long, env = "DUET_DRAFTER_CHECKPOINT")]
    pub drafter_checkpoint: Option<PathBuf>,
    /// Denoising passes per block (1 = one parallel pass).
    #[arg(long, default_value_t = 1)]
    pub draft_steps: usize,
    /// Commit every position at least this confident in each pass (Fast-dLLM); default: an even
    /// share of positions per pass, most confident first (LLaDA).
    #[arg(long)]
    pub draft_threshold: Option<f32>,
    /// Drafting temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub draft_temperature: f32,
    /// Seed of the drafter's draws at a temperature above 0.
    #[arg(long, default_value_t = 0)]
    pub draft_seed: u64,
    /// Classifier-free guidance scale for diffusion-only generation (0 = off, at most 10): drafts
    /// from `cond + w · (cond − uncond)`, the unconditional pass seeing the block without context.
    #[arg(long, default_value_t = 0.0)]
    pub draft_guidance: f32,
    /// Whether the last round's rejected tail starts the next block as given tokens.
    #[arg(long, value_enum, default_value_t = HintPolicy::None)]
    pub draft_hints: HintPolicy,
}

/// The diffusion sampler's fields and the flags that set them.
pub const DRAFT_FLAGS: &[(&str, &str)] = &[
    ("steps", "--draft-steps"),
    ("threshold", "--draft-threshold"),
    ("temperature", "--draft-temperature"),
    ("guidance", "--draft-guidance"),
    ("block", "--block-size"),
];

/// Folder of the drafter checkpoint shipped in the repository.
pub const SHIPPED_DRAFTER: &str = "drafter/checkpoints/default";
/// Where the conditioned (DFlash-style) recipe writes its checkpoint by default; not shipped.
pub const CONDITIONED_DRAFTER: &str = "drafter/checkpoints/conditioned";

impl DiffusionArgs {
    /// The checkpoint folder: the flag, else the shipped one (relative to the current directory,
    /// else to the source tree the binary was built from).
    pub fn checkpoint_path(&self) -> PathBuf {
        if let Some(p) = &self.drafter_checkpoint {
            return p.clone();
        }
        let local = PathBuf::from(SHIPPED_DRAFTER);
        if local.is_dir() {
            return local;
        }
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(SHIPPED_DRAFTER)
    }

    /// Loads the drafter model.
    pub fn load_model(&self) -> anyhow::Result<Arc<DiffusionModel>> {
        let path = self.checkpoint_path();
        crate::drafters::diffusion::load_model(&path)
            .with_context(|| format!("loading the diffusion drafter from {}", path.display()))
    }

    /// The sampler settings, checked.
    pub fn sampler(&self) -> anyhow::Result<SamplerConfig> {
        if self.draft_steps == 0 {
            anyhow::bail!("`draft_steps` must be at least 1, got 0 (--draft-steps)");
        }
        let schedule = match self.draft_threshold {
            Some(threshold) => Schedule::Threshold { threshold },
            None => Schedule::LowConfidence,
        };
        let s = SamplerConfig {
            steps: self.draft_steps,
            temperature: self.draft_temperature,
            schedule,
            top_k: 0,
            seed: self.draft_seed,
            guidance: self.draft_guidance,
        };
        s.validate(s.steps.max(1)).map_err(|e| super::flags::flag_error(e, DRAFT_FLAGS))?;
        Ok(s)
    }
}
