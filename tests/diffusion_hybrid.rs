//! Greedy hybrid decoding with the block-diffusion drafter stays token-identical to verifier-only
//! decoding, with the real 0.5B verifier: a standalone drafter and a DFlash-style drafter fed the
//! verifier's hidden states, each with and without the rejected tail kept as hints. The drafters
//! have random weights: this proves the machinery (cache sync, rollback, features), not quality.

use std::sync::Arc;

use duet_drafter::{DiffusionModel, DrafterConfig, SamplerConfig, TargetConditioning};
use duet_orchestrator::drafters::{DiffusionDrafter, HintPolicy};
use duet_orchestrator::engine::{self, GenerateParams, Mode};
use duet_tests::{load_prompts, prompt_tokens, small_model_path, small_verifier};
use duet_verifier::{TokenId, Verifier, VerifierConfig};

fn tiny(conditioned_on: Option<usize>) -> Arc<DiffusionModel> {
    let mut config = DrafterConfig::proposed_standalone(4000);
    config.num_hidden_layers = 2;
    config.hidden_size = 128;
    config.intermediate_size = 256;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.target = conditioned_on.map(|hidden| TargetConditioning {
        verifier_hidden_size: hidden,
        verifier_layer_ids: vec![24],
        add_token_embeddings: None,
    });
    Arc::new(DiffusionModel::random(&config, 11).expect("random drafter"))
}

fn generate(v: &Verifier, prompt: &[TokenId], drafter: Option<&mut DiffusionDrafter>, block: usize) -> Vec<TokenId> {
    let mut session = v.open_session().expect("session");
    let mode = if drafter.is_some() { Mode::Hybrid } else { Mode::Ar };
    let params = GenerateParams { max_tokens: 48, mode, block_size: block, ..GenerateParams::default() };
    let d = drafter.map(|d| d as &mut dyn engine::Drafter);
    engine::generate(&mut session, d, prompt, &params, &|t| v.info().is_eog(t), &mut |_| true)
        .expect("generation")
        .tokens
}

#[test]
fn greedy_hybrid_with_the_diffusion_drafter_equals_ar() {
    let plain = small_verifier();
    let mut cfg = VerifierConfig::new(small_model_path());
    cfg.ctx_size = 1024;
    cfg.max_sessions = 2;
    cfg.features = true;
    let with_features = Verifier::load(cfg).expect("verifier with features");
    let n_embd = with_features.info().n_embd as usize;

    for p in load_prompts("lossless_prompts.jsonl").iter().take(2) {
        let prompt = prompt_tokens(plain, p);
        let ar = generate(plain, &prompt, None, 1);
        for hints in [HintPolicy::None, HintPolicy::RejectedTail] {
            let sampler = SamplerConfig { steps: 2, ..SamplerConfig::default() };
            let mut standalone = DiffusionDrafter::new(tiny(None), sampler.clone(), hints).expect("drafter");
            assert_eq!(generate(plain, &prompt, Some(&mut standalone), 8), ar, "{} standalone {hints:?}", p.id);
            let mut conditioned = DiffusionDrafter::new(tiny(Some(n_embd)), sampler, hints).expect("drafter");
            assert_eq!(generate(&with_features, &prompt, Some(&mut conditioned), 8), ar, "{} conditioned {hints:?}", p.id);
        }
    }
}

#[test]
fn a_conditioned_drafter_without_features_falls_back_to_ar_steps() {
    let v = small_verifier();
    let p = &load_prompts("lossless_prompts.jsonl")[0];
    let prompt = prompt_tokens(v, p);
    let ar = generate(v, &prompt, None, 1);
    let mut d = DiffusionDrafter::new(tiny(Some(896)), SamplerConfig::default(), HintPolicy::None).expect("drafter");
    // The verifier returns no features: every proposal fails, the engine steps alone.
    assert_eq!(generate(v, &prompt, Some(&mut d), 8), ar);
}
