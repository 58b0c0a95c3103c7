//! The denoising sampler on a tiny model.

use crate::testing::{tiny_config, tokens};
use crate::{DiffusionModel, DraftCache, SamplerConfig, Schedule};

fn setup() -> (DiffusionModel, DraftCache) {
    let model = DiffusionModel::random(&tiny_config(), 21).expect("tiny model");
    let mut cache = model.new_cache().expect("cache");
    cache.extend(&model, &tokens(10, 1), None).expect("extend");
    (model, cache)
}

fn sampled(steps: usize, seed: u64) -> SamplerConfig {
    SamplerConfig { steps, temperature: 0.9, seed, top_k: 3, ..SamplerConfig::default() }
}

#[test]
fn same_seed_gives_the_same_draft() {
    let (model, mut cache) = setup();
    let a = model.draft(&mut cache, &[None; 8], &sampled(3, 5)).expect("a");
    let b = model.draft(&mut cache, &[None; 8], &sampled(3, 5)).expect("b");
    assert_eq!(a, b);
    let others: Vec<_> = (6..10).map(|seed| model.draft(&mut cache, &[None; 8], &sampled(3, seed)).expect("c")).collect();
    assert!(others.iter().any(|c| c.tokens != a.tokens), "other seeds draw other tokens");
}

#[test]
fn remasking_changes_only_masked_positions() {
    let (model, mut cache) = setup();
    let init = [Some(4), None, Some(50), None, None, Some(4)];
    for steps in [1, 3] {
        let block = model.draft(&mut cache, &init, &sampled(steps, 1)).expect("draft");
        for (i, given) in init.iter().enumerate() {
            if let Some(t) = given {
                assert_eq!(block.tokens[i], *t, "position {i} was given");
                assert_eq!((block.probs[i], block.confidences[i]), (1.0, 1.0));
                assert!(block.top[i].is_empty());
            } else {
                assert!(block.probs[i] > 0.0 && block.probs[i] <= 1.0);
                assert_eq!(block.top[i].len(), 3);
            }
        }
    }
}

#[test]
fn a_fully_given_block_needs_no_pass() {
    let (model, mut cache) = setup();
    let block = model.draft(&mut cache, &[Some(1), Some(2)], &SamplerConfig::default()).expect("draft");
    assert_eq!((block.tokens, block.forward_passes), (vec![1, 2], 0));
}

#[test]
fn one_greedy_pass_takes_the_argmax_of_every_position() {
    let (model, mut cache) = setup();
    let block = model.draft(&mut cache, &[None; 6], &SamplerConfig::default()).expect("draft");
    // Columns 62 and 63 are [MASK] and UNK, never drafted.
    let logits = model.block_logits(&mut cache, &[None; 6]).expect("logits");
    let argmax: Vec<u32> = logits.narrow(1, 0, 62).and_then(|l| l.argmax(1)).and_then(|t| t.to_vec1::<u32>()).expect("argmax");
    assert_eq!(block.tokens, argmax);
    assert_eq!(block.probs, vec![1.0; 6]);
    assert_eq!(block.forward_passes, 1);
    assert!(block.top.iter().all(|t| t.is_empty()), "top_k = 0");
}

#[test]
fn low_confidence_remasking_runs_one_pass_per_step_and_fills_the_block() {
    let (model, mut cache) = setup();
    for (steps, masked) in [(4, 8), (8, 8), (3, 2)] {
        let sampler = SamplerConfig { steps: steps.min(8), ..SamplerConfig::default() };
        let mut init = vec![None; masked];
        init.resize(8, Some(9));
        let block = model.draft(&mut cache, &init, &sampler).expect("draft");
        assert_eq!(block.forward_passes, steps.min(masked));
        assert!(block.tokens.iter().all(|&t| t < 62), "only draftable ids");
    }
}

#[test]
fn a_low_threshold_commits_everything_in_one_pass() {
    let (model, mut cache) = setup();
    let loose = SamplerConfig { steps: 8, schedule: Schedule::Threshold { threshold: 1e-6 }, ..SamplerConfig::default() };
    assert_eq!(model.draft(&mut cache, &[None; 8], &loose).expect("draft").forward_passes, 1);
    let strict = SamplerConfig { steps: 8, schedule: Schedule::Threshold { threshold: 1.0 }, ..SamplerConfig::default() };
    assert_eq!(model.draft(&mut cache, &[None; 8], &strict).expect("draft").forward_passes, 8, "one per pass");
}

#[test]
fn greedy_multi_step_drafts_agree_with_their_reported_confidences() {
    let (model, mut cache) = setup();
    let sampler = SamplerConfig { steps: 4, top_k: 2, ..SamplerConfig::default() };
    let block = model.draft(&mut cache, &[None; 8], &sampler).expect("draft");
    for i in 0..8 {
        assert_eq!(block.top[i][0].0, block.tokens[i], "greedy takes the best alternative");
        assert!((block.top[i][0].1 - block.confidences[i]).abs() < 1e-6);
    }
}

#[test]
fn out_of_range_sampler_settings_are_refused_by_name() {
    let (model, mut cache) = setup();
    let cases = [
        (SamplerConfig { steps: 0, ..SamplerConfig::default() }, 4, "steps"),
        (SamplerConfig { steps: 5, ..SamplerConfig::default() }, 4, "steps"),
        (SamplerConfig { temperature: -1.0, ..SamplerConfig::default() }, 4, "temperature"),
        (SamplerConfig { schedule: Schedule::Threshold { threshold: 0.0 }, ..SamplerConfig::default() }, 4, "threshold"),
        (SamplerConfig { guidance: -0.5, ..SamplerConfig::default() }, 4, "guidance"),
        (SamplerConfig { guidance: f32::NAN, ..SamplerConfig::default() }, 4, "guidance"),
        (SamplerConfig::default(), 65, "block"),
        (SamplerConfig::default(), 0, "block"),
    ];
    for (sampler, len, field) in cases {
        let err = model.draft(&mut cache, &vec![None; len], &sampler).expect_err(field).to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn guidance_drafts_from_the_extrapolated_logits_with_an_extra_pass() {
    let (model, mut cache) = setup();
    let w = 1.5f64;
    let guided = model.draft(&mut cache, &[None; 6], &SamplerConfig { guidance: w as f32, ..SamplerConfig::default() }).expect("guided");
    assert_eq!(guided.forward_passes, 2, "one conditional and one unconditional pass");
    let cond = model.block_logits(&mut cache, &[None; 6]).expect("cond");
    let mut empty = model.new_cache().expect("empty cache");
    let free = model.block_logits(&mut empty, &[None; 6]).expect("uncond");
    let mixed = ((cond * (1.0 + w)).expect("scale") - (free * w).expect("scale")).expect("mix");
    let argmax: Vec<u32> = mixed.narrow(1, 0, 62).and_then(|l| l.argmax(1)).and_then(|t| t.to_vec1::<u32>()).expect("argmax");
    assert_eq!(guided.tokens, argmax);
    let plain = model.draft(&mut cache, &[None; 6], &SamplerConfig::default()).expect("plain");
    assert_eq!(plain.forward_passes, 1);
}
