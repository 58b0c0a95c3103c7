//! The verifier: an autoregressive LLM run by llama.cpp, the only crate of Duet that touches llama-cpp-2.
//!
//! One llama.cpp context is owned by a dedicated thread ([`worker`]); callers talk to it through a
//! bounded channel with a [`Verifier`] handle and hold one [`Session`] (one llama.cpp sequence) per
//! generation. A session keeps the tokens in its KV cache plus one *pending* token: the verifier's own
//! greedy choice for the next position, not yet evaluated. A speculative round evaluates the pending
//! token and the k draft tokens in ONE decode call with logits at every position, accepts the longest
//! draft prefix that matches the verifier's greedy choices, returns the verifier's next token (the
//! correction after a rejection, the bonus after a full accept) and removes the rejected positions from
//! the KV cache ([`greedy::accept_prefix`] is the rule). With sampling settings on the session
//! ([`Session::set_sampling`]) the same round samples instead: every token is drawn from the
//! verifier's processed distribution ([`sampling`]) and drafts are accepted by speculative rejection
//! sampling ([`speculative`]), so hybrid output is distributed exactly as verifier-only sampling.
//!
//! Sessions verify concurrently: blocks of several sessions that reach the thread together are
//! evaluated in one decode call ([`gather`]), which costs little more than one on a CPU.
//!
//! Speculation is lossless only if evaluating a token inside a batch gives the same logits as evaluating
//! it alone. The workspace builds llama.cpp without runtime weight repacking and the worker switches off
//! the tiled matmul kernels ([`batch_invariance`]), which makes every batch size bit-identical.

pub mod batch_invariance;
pub mod config;
pub mod error;
mod gather;
pub mod greedy;
mod handle;
pub mod kernels;
pub mod quantize;
pub mod sampling;
pub mod speculative;
pub mod vocab;
mod worker;

#[cfg(test)]
mod acceptance_props;

pub use config::{KvCacheKind, VerifierConfig};
pub use error::VerifierError;
pub use greedy::Choice;
pub use handle::{BatchShare, Session, Verdict, Verifier};
pub use sampling::{SamplingParams, SparseDist};
pub use worker::{REPORTED_SUPPORT_LIMIT, Usage};
pub use vocab::{ChatMessage, ModelInfo};

/// A token id in the verifier's vocabulary.
pub type TokenId = u32;
