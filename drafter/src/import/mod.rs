//! Loaders for open masked-diffusion checkpoints, mapped onto the drafter's own architecture.
//!
//! Both families are bidirectional transformers trained with a masked-diffusion objective; loaded
//! here they run in the drafter's block-diffusion arrangement (causal cached context, bidirectional
//! block), the approximation Fast-dLLM's block cache makes for them. Their vocabularies are their
//! own: [`crate::Vocab::check_verifier`] tells whether a verifier can use them (Dream shares
//! Qwen2.5's tokenizer; LLaDA does not).

mod dream;
mod llada;

pub use dream::DREAM_MASK_TOKEN_ID;
pub use llada::LLADA_MASK_TOKEN_ID;
