//! Drafters that plug into the engine: the block-diffusion model (Duet's own), n-gram prompt lookup
//! (always available, no model) and a small autoregressive model run by llama.cpp (classic
//! speculative decoding, a peer baseline).

pub mod ar_model;
pub mod diffusion;
pub mod fallback;
pub mod ngram;

pub use ar_model::ArModelDrafter;
pub use diffusion::{DiffusionDrafter, HintPolicy};
pub use fallback::{DrafterHealth, FallbackDrafter};
pub use ngram::NgramDrafter;

/// Which drafter a hybrid generation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DrafterKind {
    /// The block-diffusion drafter (`--drafter-checkpoint`).
    Diffusion,
    /// Prompt lookup: continue the latest earlier occurrence of the context's last tokens.
    Ngram,
    /// A small autoregressive model drafting token by token (`--drafter-model`).
    ArModel,
}
