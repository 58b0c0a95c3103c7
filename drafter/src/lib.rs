//! Duet's drafter: a small block-diffusion language model that proposes a whole block of tokens
//! in a few parallel passes, for an autoregressive verifier (llama.cpp) to check.
//!
//! The model ([`DiffusionModel`]) is a stack of Qwen2/Llama decoder blocks trained as a masked
//! diffusion LM over blocks (BD3-LM; Fast-dLLM v2): the context is causal and cached per session
//! ([`DraftCache`]), the block attends to the context and to itself in both directions, and
//! `[MASK]` marks positions still to draft. Optionally it is conditioned on the verifier's hidden
//! states, injected as keys and values in every layer (DFlash), so that only the block runs
//! through the drafter. The denoising sampler ([`DiffusionModel::draft`], [`SamplerConfig`])
//! commits the most confident positions step by step (LLaDA's low-confidence remasking or
//! Fast-dLLM's threshold) and reports, per position, the exact probability each token was drawn
//! with, as lossless speculative sampling requires.
//!
//! Token ids in and out are verifier ids; the drafter may work on a reduced vocabulary mapped onto
//! them ([`Vocab`]). Checkpoints are a folder with `config.json` and `model.safetensors`
//! (CHECKPOINT.md); Dream and LLaDA checkpoints load too. Pure compute: no async, no I/O besides
//! checkpoint files.
//!
//! ```
//! use duet_drafter::{DiffusionModel, DrafterConfig, SamplerConfig};
//! # fn main() -> Result<(), duet_drafter::DrafterError> {
//! let mut config = DrafterConfig::proposed_standalone(1000);
//! config.num_hidden_layers = 1;
//! let model = DiffusionModel::random(&config, 7)?;
//! let mut cache = model.new_cache()?;
//! cache.extend(&model, &[1, 2, 3], None)?;
//! let block = model.draft(&mut cache, &[None; 4], &SamplerConfig::default())?;
//! assert_eq!(block.tokens.len(), 4);
//! cache.extend(&model, &block.tokens[..2], None)?; // the verifier accepted two tokens
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod attention;
mod cache;
mod checkpoint;
mod config;
mod decoder;
mod distribution;
mod error;
mod import;
mod kernels;
mod layers;
mod linear;
mod model;
mod sampler;
mod train;
mod vocab;
mod weights;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use cache::DraftCache;
pub use checkpoint::{CONFIG_FILE, VOCAB_TENSOR, WEIGHTS_FILE};
pub use config::{
    DEFAULT_RMS_NORM_EPS, DEFAULT_ROPE_THETA, DrafterConfig, MAX_BLOCK_SIZE, QWEN25_CODER_1_5B_HIDDEN,
    QWEN25_VOCAB_SIZE, TargetConditioning,
};
pub use error::{DrafterError, Result, VocabError};
pub use import::{DREAM_MASK_TOKEN_ID, LLADA_MASK_TOKEN_ID};
pub use layers::ForwardMode;
pub use linear::PackedLinear;
pub use model::DiffusionModel;
pub use sampler::{DraftBlock, MAX_GUIDANCE, SamplerConfig, Schedule};
pub use train::TrainBatch;
pub use vocab::{NO_TOKEN, Vocab};
pub use weights::{INIT_STD, random_weights, seeded_varmap};

/// The tensor library the drafter is built on, re-exported so callers use the same version.
pub use candle_core;
/// candle's neural-network layer (VarMap, AdamW) at the drafter's version.
pub use candle_nn;
