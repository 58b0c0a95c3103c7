//! Dream (Ye et al. 2025, "Dream 7B"): a diffusion LM adapted from Qwen2.5, in Qwen2's tensor
//! layout, with Qwen2.5's tokenizer. Adapted from an autoregressive model, it keeps the AR habit
//! of predicting the *next* token: the output at position i is the prediction for position i + 1
//! (its sampler shifts logits right by one). The drafter's `shift_logits` reproduces that.

use std::path::Path;

use serde::Deserialize;

use crate::checkpoint::{read_json, read_safetensors_dir};
use crate::config::{DrafterConfig, QWEN25_VOCAB_SIZE};
use crate::error::Result;
use crate::model::DiffusionModel;
use crate::vocab::Vocab;

/// Dream's `[MASK]` id (a spare slot of the Qwen2.5 vocabulary).
pub const DREAM_MASK_TOKEN_ID: u32 = 151_666;

/// The fields of Dream's config.json the drafter needs.
#[derive(Debug, Deserialize)]
struct DreamConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    mask_token_id: Option<u32>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

impl DiffusionModel {
    /// Loads a Dream checkpoint folder (config.json and one or more *.safetensors, any float
    /// dtype). The vocabulary is the identity over Qwen2.5's 151,936 ids; the padding rows above
    /// them and `[MASK]` are never drafted.
    pub fn load_dream(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let dream: DreamConfig = read_json(&dir.join("config.json"))?;
        let tensors = read_safetensors_dir(dir)?;
        let config = DrafterConfig {
            vocab_size: dream.vocab_size,
            hidden_size: dream.hidden_size,
            intermediate_size: dream.intermediate_size,
            num_hidden_layers: dream.num_hidden_layers,
            num_attention_heads: dream.num_attention_heads,
            num_key_value_heads: dream.num_key_value_heads.unwrap_or(dream.num_attention_heads),
            mask_token_id: dream.mask_token_id.unwrap_or(DREAM_MASK_TOKEN_ID),
            head_dim: None,
            unk_token_id: None,
            rms_norm_eps: dream.rms_norm_eps,
            rope_theta: dream.rope_theta,
            attention_bias: Some(tensors.contains_key("model.layers.0.self_attn.q_proj.bias")),
            qk_norm: None,
            tie_word_embeddings: dream.tie_word_embeddings,
            shift_logits: Some(true),
            verifier_vocab_size: Some(QWEN25_VOCAB_SIZE),
            target: None,
        };
        config.validate()?;
        let vocab = Vocab::identity(&config)?;
        Self::from_tensors(&config, vocab, tensors, dir)
    }
}
