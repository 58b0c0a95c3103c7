//! The session cache: masks, recomputation, truncation.

use candle_core::Tensor;

use crate::testing::{from_scratch, max_abs_diff, tiny_config, tokens};
use crate::{DiffusionModel, ForwardMode};

const MASK: u32 = 62;

fn model() -> DiffusionModel {
    DiffusionModel::random(&tiny_config(), 11).expect("tiny model")
}

#[test]
fn block_logits_have_one_row_per_block_position() {
    let model = model();
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &tokens(9, 1), None).expect("extend");
    for len in [1, 4, 16] {
        let logits = model.block_logits(&mut cache, &vec![None; len]).expect("logits");
        assert_eq!(logits.dims(), &[len, 64]);
    }
    assert_eq!((cache.len(), cache.cached_len(), cache.pending_len()), (9, 9, 0));
}

#[test]
fn cached_context_equals_recomputation_from_scratch() {
    let model = model();
    let context = tokens(12, 2);
    let mut cache = model.new_cache().expect("cache");
    for piece in [&context[..5], &context[5..6], &context[6..]] {
        cache.extend(&model, piece, None).expect("extend");
    }
    let block = [Some(3), None, None, Some(7)];
    let cached = model.block_logits(&mut cache, &block).expect("cached");
    let ids = [3, MASK, MASK, 7];
    assert!(max_abs_diff(&cached, &from_scratch(&model, &context, &ids, ForwardMode::Inference)) < 1e-4);
    assert!(max_abs_diff(&cached, &from_scratch(&model, &context, &ids, ForwardMode::Training)) < 1e-4);
}

#[test]
fn a_long_prompt_enters_the_cache_in_chunks_exactly() {
    let model = model();
    let context = tokens(600, 3);
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &context, None).expect("extend");
    let cached = model.block_logits(&mut cache, &[None; 3]).expect("cached");
    let scratch = from_scratch(&model, &context, &[MASK; 3], ForwardMode::Inference);
    assert!(max_abs_diff(&cached, &scratch) < 1e-4);
}

#[test]
fn context_never_sees_the_block() {
    let model = model();
    let context = tokens(8, 4);
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &context, None).expect("extend");
    let (k_before, v_before) = cache.layers[1].rows(8).expect("rows");
    let (k_before, v_before) = (k_before.copy().expect("copy"), v_before.copy().expect("copy"));
    model.block_logits(&mut cache, &[Some(1), None, Some(9)]).expect("draft a");
    model.block_logits(&mut cache, &[None; 12]).expect("draft b");
    let (k_after, v_after) = cache.layers[1].rows(8).expect("rows");
    assert_eq!(max_abs_diff(&k_before, &k_after), 0.0);
    assert_eq!(max_abs_diff(&v_before, &v_after), 0.0);

    // Whatever the block held, the context's own outputs (seen through the next round) are equal.
    cache.extend(&model, &[5], None).expect("extend");
    let mut fresh = model.new_cache().expect("cache");
    fresh.extend(&model, &[context.as_slice(), &[5]].concat(), None).expect("extend");
    let a = model.block_logits(&mut cache, &[None; 2]).expect("a");
    let b = model.block_logits(&mut fresh, &[None; 2]).expect("b");
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn block_positions_see_each_other() {
    let model = model();
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &tokens(6, 5), None).expect("extend");
    let a = model.block_logits(&mut cache, &[None, None, None, Some(10)]).expect("a");
    let b = model.block_logits(&mut cache, &[None, None, None, Some(40)]).expect("b");
    let first = |t: &Tensor| t.get(0).expect("row 0");
    assert!(max_abs_diff(&first(&a), &first(&b)) > 1e-6, "position 0 sees position 3");
}

#[test]
fn truncating_the_cache_after_a_rejection_equals_recomputation() {
    let model = model();
    let context = tokens(12, 6);
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &context, None).expect("extend");
    model.block_logits(&mut cache, &[None; 5]).expect("draft");
    cache.truncate(7);
    assert_eq!((cache.len(), cache.cached_len()), (7, 7));
    cache.extend(&model, &[20, 21, 22], None).expect("extend");

    let mut fresh = model.new_cache().expect("cache");
    fresh.extend(&model, &[&context[..7], &[20, 21, 22]].concat(), None).expect("extend");
    let a = model.block_logits(&mut cache, &[None; 4]).expect("a");
    let b = model.block_logits(&mut fresh, &[None; 4]).expect("b");
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn a_deep_copy_of_the_cache_is_independent() {
    let model = model();
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &tokens(5, 7), None).expect("extend");
    let mut copy = cache.try_clone().expect("clone");
    let before = model.block_logits(&mut copy, &[None; 2]).expect("before");
    cache.truncate(2);
    cache.extend(&model, &[1, 2, 3, 4, 5, 6], None).expect("diverge");
    let after = model.block_logits(&mut copy, &[None; 2]).expect("after");
    assert_eq!(max_abs_diff(&before, &after), 0.0);
}

#[test]
fn out_of_range_tokens_and_stray_features_are_refused() {
    let model = model();
    let mut cache = model.new_cache().expect("cache");
    let err = cache.extend(&model, &[151_936], None).expect_err("outside Qwen2.5").to_string();
    assert!(err.contains("151936"), "{err}");
    let err = cache.extend(&model, &[1], Some(&[0.0; 4])).expect_err("standalone").to_string();
    assert!(err.contains("features"), "{err}");
    assert!(cache.is_empty(), "a refused extend leaves the cache as it was");
    let other = DiffusionModel::random(&crate::testing::tiny_conditioned_config(), 1).expect("model");
    assert!(model.block_logits(&mut other.new_cache().expect("cache"), &[None]).is_err(), "foreign cache");
}
