//! The drafter's hyper-parameters, as stored in a checkpoint's `config.json`.
//!
//! The architecture is a stack of Qwen2/Llama decoder blocks (RMSNorm, rotary position embedding,
//! grouped-query attention, SwiGLU) used as a masked diffusion language model over blocks (BD3-LM,
//! Fast-dLLM v2). Optional fields are `Option`s resolved by accessors with named defaults, so a
//! config.json only has to spell out what differs from them; `target` switches on DFlash-style
//! conditioning on the verifier's hidden states.

use serde::{Deserialize, Serialize};

use crate::error::{DrafterError, Result};

/// Largest block the drafter drafts in one call (positions in flight at once).
pub const MAX_BLOCK_SIZE: usize = 64;
/// Default RMSNorm epsilon (Qwen2).
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
/// Default rotary base (Qwen2.5 uses 1e6 for long contexts; the drafter sees the same positions).
pub const DEFAULT_ROPE_THETA: f64 = 1_000_000.0;
/// Vocabulary slots of the Qwen2.5 verifiers (151,643 regular tokens plus specials and padding).
pub const QWEN25_VOCAB_SIZE: usize = 151_936;
/// Width of Qwen2.5-Coder-1.5B's hidden states, the verifier the shipped drafter conditions on.
pub const QWEN25_CODER_1_5B_HIDDEN: usize = 1536;

/// Hyper-parameters of a [`crate::DiffusionModel`]; the serde form is the checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrafterConfig {
    /// Rows of the embedding and of the output layer: the drafter's own vocabulary, the `[MASK]`
    /// and UNK ids included. Smaller than the verifier's when the checkpoint has a reduced
    /// vocabulary (see CHECKPOINT.md).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Drafter id of the `[MASK]` token that stands for a position still to be drafted.
    pub mask_token_id: u32,
    /// Width of one attention head; default `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Drafter id that stands for verifier tokens outside a reduced vocabulary; none for a full
    /// vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unk_token_id: Option<u32>,
    /// RMSNorm epsilon; default [`DEFAULT_RMS_NORM_EPS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    /// Rotary base; default [`DEFAULT_ROPE_THETA`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Whether q/k/v projections have a bias (Qwen2 and Dream do); default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Whether queries and keys are RMS-normalised per head before RoPE (Qwen3, DFlash); default
    /// false. Helps keep attention logits tame when keys come from projected verifier features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_norm: Option<bool>,
    /// Whether the output layer reuses the embedding matrix; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Whether the output at position i predicts the token at i + 1 (Dream, adapted from an
    /// autoregressive model) instead of the token at i (LLaDA, BD3-LM, DFlash); default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_logits: Option<bool>,
    /// Size of the verifier vocabulary the drafter was made for; default [`QWEN25_VOCAB_SIZE`].
    /// Checked against the verifier at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier_vocab_size: Option<usize>,
    /// DFlash-style conditioning on verifier hidden states; none for a standalone diffusion LM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetConditioning>,
}

/// How the drafter conditions on the verifier (DFlash): the verifier's hidden states at the context
/// positions, from one or more of its layers, concatenated, are projected (Linear + RMSNorm) and
/// injected as keys and values in every drafter layer. The context tokens then never run through
/// the drafter's layers; only the block does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetConditioning {
    /// Width of one verifier hidden state (1536 for Qwen2.5-Coder-1.5B).
    pub verifier_hidden_size: usize,
    /// Verifier layers whose hidden states are concatenated, in order (informative for whoever
    /// extracts them; only their count shapes the model).
    pub verifier_layer_ids: Vec<usize>,
    /// Whether the projected features are added to the context tokens' own embeddings; default
    /// false (DFlash uses the features alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_token_embeddings: Option<bool>,
}

impl TargetConditioning {
    /// Width of one feature row: `verifier_layer_ids.len() * verifier_hidden_size`.
    pub fn feature_dim(&self) -> usize {
        self.verifier_layer_ids.len() * self.verifier_hidden_size
    }

    /// Whether context token embeddings are added to the projected features.
    pub fn add_token_embeddings(&self) -> bool {
        self.add_token_embeddings.unwrap_or(false)
    }
}

impl DrafterConfig {
    /// The size proposed for shipping with Qwen2.5-Coder verifiers: 4 layers of width 256 (4 query
    /// heads and 2 key/value heads of width 64, per-head q/k norms), a SwiGLU of 768, a reduced
    /// vocabulary of `reduced_vocab` frequent tokens (8192 proposed) plus `[MASK]` and UNK, and
    /// DFlash conditioning on three layers of Qwen2.5-Coder-1.5B. Sized so that one parallel pass
    /// over a block of up to 16 positions costs about 15% of one verifier decode step (28 ms) on
    /// the project's 2-core CPU (see the `drafter_block` bench); every further denoising step costs
    /// another pass. A pass streams all the weights, the output layer being the largest, so width
    /// and vocabulary are kept small.
    pub fn proposed(reduced_vocab: usize) -> Self {
        let mut config = Self::proposed_standalone(reduced_vocab);
        config.target = Some(TargetConditioning {
            verifier_hidden_size: QWEN25_CODER_1_5B_HIDDEN,
            verifier_layer_ids: vec![1, 13, 25],
            add_token_embeddings: None,
        });
        config
    }

    /// [`DrafterConfig::proposed`] without conditioning: a standalone block-diffusion LM.
    pub fn proposed_standalone(reduced_vocab: usize) -> Self {
        let vocab_size = reduced_vocab + 2;
        Self {
            vocab_size,
            hidden_size: 256,
            intermediate_size: 768,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            mask_token_id: reduced_vocab as u32,
            head_dim: None,
            unk_token_id: Some(reduced_vocab as u32 + 1),
            rms_norm_eps: None,
            rope_theta: None,
            attention_bias: None,
            qk_norm: Some(true),
            tie_word_embeddings: None,
            shift_logits: None,
            verifier_vocab_size: None,
            target: None,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RMSNorm epsilon.
    pub fn rms_norm_eps(&self) -> f64 {
        self.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS)
    }

    /// Rotary base.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// Whether q/k/v projections have a bias.
    pub fn attention_bias(&self) -> bool {
        self.attention_bias.unwrap_or(false)
    }

    /// Whether queries and keys are normalised per head.
    pub fn qk_norm(&self) -> bool {
        self.qk_norm.unwrap_or(false)
    }

    /// Whether the output layer is the embedding matrix.
    pub fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(false)
    }

    /// Whether the output at position i predicts position i + 1.
    pub fn shift_logits(&self) -> bool {
        self.shift_logits.unwrap_or(false)
    }

    /// Size of the verifier vocabulary the drafter was made for.
    pub fn verifier_vocab_size(&self) -> usize {
        self.verifier_vocab_size.unwrap_or(QWEN25_VOCAB_SIZE)
    }

    /// Checks every field and their agreement; the model refuses a config that fails here.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, reason: String) -> DrafterError {
            DrafterError::Config { field, reason }
        }
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim()),
            ("verifier_vocab_size", self.verifier_vocab_size()),
        ] {
            if value == 0 {
                return Err(bad(field, "must be at least 1, got 0".into()));
            }
        }
        if self.vocab_size > u32::MAX as usize - 1 {
            return Err(bad("vocab_size", format!("must be below {}, got {}", u32::MAX, self.vocab_size)));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "must divide num_attention_heads ({}), got {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(bad("head_dim", format!("must be even for rotary embeddings, got {}", self.head_dim())));
        }
        if self.mask_token_id as usize >= self.vocab_size {
            return Err(bad(
                "mask_token_id",
                format!("must be below vocab_size ({}), got {}", self.vocab_size, self.mask_token_id),
            ));
        }
        if let Some(unk) = self.unk_token_id {
            if unk as usize >= self.vocab_size {
                return Err(bad("unk_token_id", format!("must be below vocab_size ({}), got {unk}", self.vocab_size)));
            }
            if unk == self.mask_token_id {
                return Err(bad("unk_token_id", format!("must differ from mask_token_id ({unk})")));
            }
        }
        let eps = self.rms_norm_eps();
        if !(eps > 0.0 && eps < 1.0) {
            return Err(bad("rms_norm_eps", format!("must be in (0, 1), got {eps}")));
        }
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 1.0) {
            return Err(bad("rope_theta", format!("must be a finite number above 1, got {theta}")));
        }
        if let Some(target) = &self.target {
            if target.verifier_hidden_size == 0 {
                return Err(bad("target.verifier_hidden_size", "must be at least 1, got 0".into()));
            }
            if target.verifier_layer_ids.is_empty() {
                return Err(bad("target.verifier_layer_ids", "must name at least one verifier layer".into()));
            }
            if self.shift_logits() {
                return Err(bad("shift_logits", "cannot be combined with `target` conditioning".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_fall_back_to_named_defaults() {
        let json = r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "mask_token_id": 9}"#;
        let config: DrafterConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(config.head_dim(), 4);
        assert_eq!(config.rope_theta(), DEFAULT_ROPE_THETA);
        assert_eq!(config.verifier_vocab_size(), QWEN25_VOCAB_SIZE);
        assert!(!config.shift_logits() && !config.attention_bias() && config.target.is_none());
        config.validate().expect("valid");
        let round_trip: DrafterConfig =
            serde_json::from_str(&serde_json::to_string(&config).expect("writes")).expect("parses");
        assert_eq!(round_trip, config);
    }

    #[test]
    fn invalid_fields_are_named_in_the_error() {
        let mut config = DrafterConfig::proposed(100);
        config.num_key_value_heads = 3;
        let err = config.validate().expect_err("4 heads are not divisible by 3").to_string();
        assert!(err.contains("num_key_value_heads") && err.contains('4'), "{err}");
        let mut config = DrafterConfig::proposed(100);
        config.mask_token_id = 500;
        let err = config.validate().expect_err("mask outside vocab").to_string();
        assert!(err.contains("mask_token_id") && err.contains("102"), "{err}");
    }

    #[test]
    fn proposed_config_is_valid_and_conditioned() {
        let config = DrafterConfig::proposed(8192);
        config.validate().expect("valid");
        assert_eq!(config.target.as_ref().map(TargetConditioning::feature_dim), Some(3 * 1536));
        assert_eq!((config.vocab_size, config.mask_token_id, config.unk_token_id), (8194, 8192, Some(8193)));
        assert_eq!(config.head_dim(), 64);
    }
}
