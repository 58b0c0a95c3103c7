//! New context tokens cached by the drafting pass itself (`DraftCache::extend_deferred`): the same
//! logits, caches and greedy drafts as caching them first with `extend`, or recomputing everything.

use std::path::PathBuf;

use crate::testing::{from_scratch, max_abs_diff, tiny_config, tokens};
use crate::{DiffusionModel, DraftCache, ForwardMode, SamplerConfig};

const MASK: u32 = 62;

fn model() -> DiffusionModel {
    DiffusionModel::random(&tiny_config(), 13).expect("tiny model")
}

#[test]
fn deferred_context_tokens_give_the_logits_of_recomputation() {
    let model = model();
    let context = tokens(14, 8);
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &context[..5], None).expect("extend");
    cache.extend_deferred(&model, &context[5..6]).expect("defer");
    cache.extend_deferred(&model, &context[6..]).expect("defer");
    assert_eq!((cache.cached_len(), cache.pending_len()), (5, 9), "nothing runs before the draft");
    let logits = model.block_logits(&mut cache, &[Some(3), None, None]).expect("logits");
    assert_eq!((cache.cached_len(), cache.pending_len()), (14, 0), "the pass cached the deferred tokens");
    let scratch = from_scratch(&model, &context, &[3, MASK, MASK], ForwardMode::Inference);
    assert!(max_abs_diff(&logits, &scratch) < 1e-4);
}

#[test]
fn a_drafting_pass_caches_deferred_tokens_as_extend_caches_them() {
    let model = model();
    let context = tokens(11, 9);
    let mut eager = model.new_cache().expect("cache");
    eager.extend(&model, &context, None).expect("extend");
    let mut deferred = model.new_cache().expect("cache");
    deferred.extend(&model, &context[..4], None).expect("extend");
    deferred.extend_deferred(&model, &context[4..]).expect("defer");
    let greedy = SamplerConfig::default();
    model.draft(&mut deferred, &[None; 5], &greedy).expect("draft");
    for (layer, (a, b)) in eager.layers.iter().zip(&deferred.layers).enumerate() {
        let ((ka, va), (kb, vb)) = (a.rows(11).expect("rows"), b.rows(11).expect("rows"));
        assert!(max_abs_diff(&ka, &kb) < 1e-5 && max_abs_diff(&va, &vb) < 1e-5, "layer {layer}");
    }
}

#[test]
fn a_long_deferred_prompt_enters_the_cache_in_chunks_exactly() {
    let model = model();
    let context = tokens(600, 10);
    let mut cache = model.new_cache().expect("cache");
    cache.extend_deferred(&model, &context).expect("defer");
    let logits = model.block_logits(&mut cache, &[None; 3]).expect("logits");
    assert_eq!(cache.cached_len(), 600);
    assert!(max_abs_diff(&logits, &from_scratch(&model, &context, &[MASK; 3], ForwardMode::Inference)) < 1e-4);
}

#[test]
fn a_shifted_model_keeps_its_last_token_pending_behind_deferred_ones() {
    let mut config = tiny_config();
    config.shift_logits = Some(true);
    let model = DiffusionModel::random(&config, 14).expect("model");
    let context = tokens(9, 11);
    let mut eager = model.new_cache().expect("cache");
    eager.extend(&model, &context, None).expect("extend");
    let mut deferred = model.new_cache().expect("cache");
    deferred.extend(&model, &context[..3], None).expect("extend");
    deferred.extend_deferred(&model, &context[3..]).expect("defer");
    let a = model.block_logits(&mut eager, &[None; 4]).expect("eager");
    let b = model.block_logits(&mut deferred, &[None; 4]).expect("deferred");
    assert!(max_abs_diff(&a, &b) < 1e-5);
    assert_eq!((deferred.cached_len(), deferred.pending_len()), (8, 1), "the last token predicts the block");
}

/// Greedy drafts over rounds as the engine's adapter runs them (the context grows by a few
/// accepted tokens, sometimes taken back), from a session that defers its new tokens, and from a
/// cache rebuilt from the whole context every round.
fn rounds_agree(model: &DiffusionModel, context: &[u32], block: usize, steps: usize) {
    let sampler = SamplerConfig { steps, ..SamplerConfig::default() };
    let mut session = model.new_cache().expect("cache");
    let (mut len, mut round) = (context.len() / 2, 0usize);
    session.extend_deferred(model, &context[..len]).expect("prompt");
    while len < context.len() {
        let drafted = model.draft(&mut session, &vec![None; block], &sampler).expect("draft");
        let mut fresh = DraftCache::new(model).expect("cache");
        fresh.extend(model, &context[..len], None).expect("recompute");
        let recomputed = model.draft(&mut fresh, &vec![None; block], &sampler).expect("draft");
        assert_eq!(drafted.tokens, recomputed.tokens, "round {round}, context {len}, B {block}, T {steps}");
        if round % 3 == 2 {
            len -= 2; // tokens taken back
            session.truncate(len);
        }
        let add = (1 + round % 5).min(context.len() - len);
        session.extend_deferred(model, &context[len..len + add]).expect("accepted");
        (len, round) = (len + add, round + 1);
    }
}

#[test]
fn greedy_drafts_with_deferred_context_equal_drafts_from_recomputation() {
    let model = model();
    let context = tokens(60, 12);
    for (block, steps) in [(4, 1), (8, 1), (8, 3)] {
        rounds_agree(&model, &context, block, steps);
    }
}

#[test]
fn the_shipped_checkpoint_drafts_the_same_greedy_blocks_with_deferred_context() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("checkpoints/default");
    let model = DiffusionModel::load(&dir).expect("the shipped checkpoint");
    let ids: Vec<u32> = model.vocab().draft_to_verifier().iter().copied().filter(|&t| t != u32::MAX).collect();
    let context: Vec<u32> = (0..80).map(|i| ids[(i * 7919 + 13) % ids.len()]).collect();
    for (block, steps) in [(8, 1), (8, 2)] {
        rounds_agree(&model, &context, block, steps);
    }
}
