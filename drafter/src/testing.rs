//! Tiny models and comparisons shared by the tests.

use candle_core::Tensor;

use crate::config::{DrafterConfig, TargetConditioning};
use crate::{DiffusionModel, ForwardMode, TrainBatch};

/// A standalone model small enough to run hundreds of times per test: 2 layers of width 32,
/// 4 query heads over 2 key/value heads, a reduced vocabulary of 62 tokens plus `[MASK]` and UNK.
pub(crate) fn tiny_config() -> DrafterConfig {
    let mut config = DrafterConfig::proposed_standalone(62);
    config.hidden_size = 32;
    config.intermediate_size = 48;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.rope_theta = Some(10_000.0);
    config
}

/// [`tiny_config`] conditioned on two layers of a verifier of width 24.
pub(crate) fn tiny_conditioned_config() -> DrafterConfig {
    let mut config = tiny_config();
    config.target =
        Some(TargetConditioning { verifier_hidden_size: 24, verifier_layer_ids: vec![3, 7], add_token_embeddings: None });
    config
}

/// Largest absolute difference between two tensors of the same shape.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()).expect("same shapes")
}

/// Deterministic verifier feature rows for context positions `start..start + rows`, row-major with
/// `dim` values per row; a row depends only on its position and `salt`, like real features depend
/// only on the context up to them.
pub(crate) fn features(start: usize, rows: usize, dim: usize, salt: u32) -> Vec<f32> {
    (start * dim..(start + rows) * dim)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(97)) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Deterministic context tokens below 62 (ids the tiny models share with the verifier).
pub(crate) fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i.wrapping_mul(7919) ^ salt.wrapping_mul(31)) % 62).collect()
}

/// Block logits computed without any cache, from the whole sequence (drafter ids) at once.
pub(crate) fn from_scratch(model: &DiffusionModel, context: &[u32], block: &[u32], mode: ForwardMode) -> Tensor {
    let ids: Vec<u32> = context.iter().chain(block).copied().collect();
    let tokens = Tensor::from_vec(ids, (1, context.len() + block.len()), model.device()).expect("tokens");
    let batch = TrainBatch { tokens, context_len: context.len(), features: None };
    model.forward_train(&batch, mode).and_then(|t| Ok(t.squeeze(0)?)).expect("forward")
}
