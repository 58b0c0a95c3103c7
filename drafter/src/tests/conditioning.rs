//! DFlash-style conditioning on verifier features.

use candle_core::Tensor;

use crate::testing::{features, max_abs_diff, tiny_conditioned_config, tokens};
use crate::{DiffusionModel, DraftCache, ForwardMode, TrainBatch};

const DIM: usize = 48; // two verifier layers of width 24
const MASK: u32 = 62;

fn model() -> DiffusionModel {
    DiffusionModel::random(&tiny_conditioned_config(), 31).expect("tiny conditioned model")
}

/// Block logits without a cache: `context` tokens with features for the first `featured` of them
/// (the rest pending, run with the block), then the block.
fn from_scratch(model: &DiffusionModel, context: &[u32], featured: usize, block: &[u32], salt: u32) -> Tensor {
    let ids: Vec<u32> = context.iter().chain(block).copied().collect();
    let n = ids.len();
    let batch = TrainBatch {
        tokens: Tensor::from_vec(ids, (1, n), model.device()).expect("tokens"),
        context_len: featured,
        features: Some(Tensor::from_vec(features(0, featured, DIM, salt), (1, featured, DIM), model.device()).expect("f")),
    };
    let logits = model.forward_train(&batch, ForwardMode::Inference).expect("forward").squeeze(0).expect("squeeze");
    logits.narrow(0, n - featured - block.len(), block.len()).expect("block rows")
}

fn cache_with(model: &DiffusionModel, context: &[u32], featured: usize, salt: u32) -> DraftCache {
    let mut cache = model.new_cache().expect("cache");
    cache.extend(model, context, Some(&features(0, featured, DIM, salt))).expect("extend");
    cache
}

#[test]
fn the_conditioned_cache_equals_recomputation_and_keeps_unfeatured_tokens_pending() {
    let model = model();
    let context = tokens(10, 1);
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &context[..4], Some(&features(0, 3, DIM, 0))).expect("first round");
    assert_eq!((cache.cached_len(), cache.pending_len()), (3, 1));
    cache.extend(&model, &context[4..], Some(&features(3, 6, DIM, 0))).expect("second round");
    assert_eq!((cache.cached_len(), cache.pending_len()), (9, 1), "the newest token has no features yet");
    let block = [None, Some(5), None];
    let cached = model.block_logits(&mut cache, &block).expect("cached");
    assert!(max_abs_diff(&cached, &from_scratch(&model, &context, 9, &[MASK, 5, MASK], 0)) < 1e-4);
}

#[test]
fn conditioning_changes_the_output() {
    let model = model();
    let context = tokens(8, 2);
    let a = model.block_logits(&mut cache_with(&model, &context, 7, 0), &[None; 4]).expect("a");
    let b = model.block_logits(&mut cache_with(&model, &context, 7, 1), &[None; 4]).expect("b");
    assert!(max_abs_diff(&a, &b) > 1e-4, "other verifier states, other draft logits");
}

#[test]
fn the_conditioned_cache_truncates_correctly() {
    let model = model();
    let context = tokens(12, 3);
    let mut cache = cache_with(&model, &context, 11, 0);
    model.block_logits(&mut cache, &[None; 6]).expect("draft");
    cache.truncate(6);
    assert_eq!((cache.len(), cache.cached_len()), (6, 6));
    cache.extend(&model, &[40, 41], Some(&features(6, 1, DIM, 0))).expect("accepted + correction");

    let mut fresh = model.new_cache().expect("cache");
    fresh.extend(&model, &[&context[..6], &[40, 41]].concat(), Some(&features(0, 7, DIM, 0))).expect("fresh");
    let a = model.block_logits(&mut cache, &[None; 4]).expect("a");
    let b = model.block_logits(&mut fresh, &[None; 4]).expect("b");
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn features_may_arrive_after_their_tokens() {
    let model = model();
    let context = tokens(6, 4);
    let mut late = model.new_cache().expect("cache");
    late.extend(&model, &context, None).expect("tokens first");
    assert_eq!(late.pending_len(), 6);
    let before = model.block_logits(&mut late, &[None; 2]).expect("all pending");
    assert!(max_abs_diff(&before, &from_scratch(&model, &context, 0, &[MASK, MASK], 0)) < 1e-4);
    late.extend(&model, &[], Some(&features(0, 5, DIM, 0))).expect("features later");
    let mut eager = cache_with(&model, &context, 5, 0);
    let a = model.block_logits(&mut late, &[None; 2]).expect("a");
    let b = model.block_logits(&mut eager, &[None; 2]).expect("b");
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn malformed_features_are_refused() {
    let model = model();
    let mut cache = model.new_cache().expect("cache");
    let err = cache.extend(&model, &[1, 2], Some(&[0.5; DIM + 1])).expect_err("ragged").to_string();
    assert!(err.contains("48"), "{err}");
    let err = cache.extend(&model, &[1, 2], Some(&features(0, 3, DIM, 0))).expect_err("too many rows").to_string();
    assert!(err.contains("3 positions"), "{err}");
    assert!(cache.is_empty());
}

#[test]
fn token_embeddings_can_be_added_to_the_features() {
    let mut config = tiny_conditioned_config();
    if let Some(target) = config.target.as_mut() {
        target.add_token_embeddings = Some(true);
    }
    let model = DiffusionModel::random(&config, 31).expect("model");
    let plain = self::model();
    let context = tokens(5, 5);
    let mut cache = cache_with(&model, &context, 5, 0);
    let with = model.block_logits(&mut cache, &[None; 3]).expect("with embeddings");
    assert!(max_abs_diff(&with, &from_scratch(&model, &context, 5, &[MASK; 3], 0)) < 1e-4);
    let without = plain.block_logits(&mut cache_with(&plain, &context, 5, 0), &[None; 3]).expect("without");
    assert!(max_abs_diff(&with, &without) > 1e-5);
}
