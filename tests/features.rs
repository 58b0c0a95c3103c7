//! Verifier hidden states for target-conditioned drafters, with the real 0.5B model: one row per
//! token the verifier keeps, identical whether a token was evaluated alone or inside a block, and
//! switching them on leaves the greedy output unchanged.

use duet_tests::{load_prompts, prompt_tokens, small_model_path, small_verifier};
use duet_verifier::{TokenId, Verifier, VerifierConfig};

fn feature_verifier() -> Verifier {
    let mut cfg = VerifierConfig::new(small_model_path());
    cfg.ctx_size = 1024;
    cfg.max_sessions = 2;
    cfg.features = true;
    Verifier::load(cfg).expect("loading the 0.5B verifier with features")
}

#[test]
fn features_from_a_block_equal_features_from_single_steps() {
    let v = feature_verifier();
    let n_embd = v.info().n_embd as usize;
    let p = &load_prompts("lossless_prompts.jsonl")[0];
    let prompt = prompt_tokens(&v, p);

    // Token by token.
    let mut s = v.open_session().expect("session");
    let first = s.prefill(&prompt).expect("prefill");
    assert_eq!(first.features.len(), prompt.len() * n_embd);
    let mut tokens: Vec<TokenId> = vec![first.next.token];
    let mut step_features = Vec::new();
    for _ in 0..12 {
        let r = s.step().expect("step");
        assert_eq!(r.features.len(), n_embd);
        step_features.extend_from_slice(&r.features);
        tokens.push(r.next.token);
    }
    drop(s);

    // The same continuation verified as one block: pending token + 11 drafts, all accepted.
    let mut s = v.open_session().expect("session");
    let again = s.prefill(&prompt).expect("prefill");
    assert_eq!(again.features, first.features, "prompt features are deterministic");
    let r = s.verify(&tokens[1..12]).expect("verify");
    assert_eq!(r.accepted, 11);
    assert_eq!(r.next.token, tokens[12]);
    assert_eq!(r.features.len(), 12 * n_embd);
    assert!(r.features == step_features, "block features differ from step features");
}

#[test]
fn rejected_drafts_leave_no_features() {
    let v = feature_verifier();
    let n_embd = v.info().n_embd as usize;
    let mut s = v.open_session().expect("session");
    let first = s.prefill(&v.tokenize("def add(a, b):\n", true).expect("tokenize")).expect("prefill");
    // A draft whose first token is surely wrong: only the pending token is kept.
    let wrong = if first.next.token == 0 { 1 } else { 0 };
    let r = s.verify(&[wrong, wrong, wrong]).expect("verify");
    assert_eq!(r.accepted, 0);
    assert_eq!(r.features.len(), n_embd);
}

#[test]
fn features_do_not_change_the_greedy_output() {
    let with = feature_verifier();
    let without = small_verifier();
    for p in load_prompts("lossless_prompts.jsonl").iter().take(3) {
        let prompt = prompt_tokens(without, p);
        let run = |v: &Verifier| {
            let mut s = v.open_session().expect("session");
            let mut out = vec![s.prefill(&prompt).expect("prefill").next.token];
            for _ in 0..40 {
                out.push(s.step().expect("step").next.token);
            }
            out
        };
        assert_eq!(run(&with), run(without), "{}", p.id);
    }
}
