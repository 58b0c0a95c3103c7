//! Errors of the drafter crate: one enum for the crate boundary, one for vocabulary agreement.
//!
//! Messages name the field or file and the limit, so that a caller can log them as they are.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading, saving or running the drafter.
#[derive(Debug, thiserror::Error)]
pub enum DrafterError {
    /// A tensor operation failed (shape mismatch, missing tensor in a checkpoint, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// A configuration field is out of range or inconsistent with another one.
    #[error("invalid drafter config: `{field}` {reason}")]
    Config {
        /// The offending field, as spelled in config.json.
        field: &'static str,
        /// What is wrong with it, with the limit.
        reason: String,
    },

    /// A checkpoint file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A config.json could not be parsed or written.
    #[error("cannot parse {path}: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A checkpoint is readable but does not describe a usable model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The drafter's vocabulary does not fit the verifier's, or a token id is out of range.
    #[error(transparent)]
    Vocab(#[from] VocabError),

    /// A sampler setting is out of range.
    #[error("invalid sampler setting: `{field}` {reason}")]
    Sampler {
        /// The offending field of [`crate::SamplerConfig`] or the block.
        field: &'static str,
        /// What is wrong, with the limit.
        reason: String,
    },

    /// An input (block, features, context) does not fit the model or the cache.
    #[error("invalid input: {0}")]
    Input(String),
}

/// The drafter and the verifier disagree about token ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabError {
    /// The vocabularies are not the same one.
    #[error("drafter vocabulary ({drafter}) does not match the verifier vocabulary ({verifier})")]
    Mismatch {
        /// The drafter's vocabulary, described.
        drafter: String,
        /// The verifier's vocabulary, described.
        verifier: String,
    },

    /// A verifier token id is outside the verifier vocabulary the drafter was made for.
    #[error("token id {id} is outside the verifier vocabulary of {verifier_vocab_size} ids")]
    OutOfRange {
        /// The id.
        id: u32,
        /// The verifier vocabulary size.
        verifier_vocab_size: usize,
    },

    /// A verifier token is not in the reduced drafter vocabulary and the checkpoint has no UNK id.
    #[error("verifier token {id} is not in the drafter's reduced vocabulary and the checkpoint has no `unk_token_id`")]
    NotInVocabulary {
        /// The verifier id.
        id: u32,
    },

    /// The drafter-id → verifier-id map stored in a checkpoint is malformed.
    #[error("vocabulary map: {0}")]
    BadMap(String),
}

/// Short alias used throughout the crate.
pub type Result<T, E = DrafterError> = std::result::Result<T, E>;
