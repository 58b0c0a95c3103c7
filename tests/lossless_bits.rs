//! Batch invariance at the level of bits: a token the verifier evaluates inside a verification block
//! gets exactly the logits it gets in a plain one-token step, so the greedy choice cannot depend on
//! how the drafts were grouped — not only on the prompts where no near-tie happened to show it.
//! Checked through the margins (best logit − runner-up) the engine records for every emitted token.

use duet_orchestrator::engine::{self, Draft, DraftError, DraftRequest, Drafter, GenerateParams, Generation, Mode};
use duet_tests::{TestPrompt, load_prompts, prompt_tokens, small_verifier};
use duet_verifier::TokenId;

const MAX_TOKENS: usize = 48;

fn run(prompt: &[TokenId], mode: Mode, drafter: Option<&mut dyn Drafter>, block_size: usize) -> Generation {
    let v = small_verifier();
    let mut session = v.open_session().expect("session");
    let params = GenerateParams { max_tokens: MAX_TOKENS, mode, block_size, ..GenerateParams::default() };
    engine::generate(&mut session, drafter, prompt, &params, &|t| v.info().is_eog(t), &mut |_| true).expect("generate")
}

/// Proposes the verifier-only continuation exactly: every block is accepted whole, so every token
/// after the first of a round is evaluated as a row of a multi-row block.
struct Replay {
    prompt_len: usize,
    reference: Vec<TokenId>,
}

impl Drafter for Replay {
    fn name(&self) -> &str {
        "replay"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let done = req.context.len() - self.prompt_len;
        let end = (done + req.max_len).min(self.reference.len());
        let tokens = self.reference.get(done..end).unwrap_or(&[]).to_vec();
        Ok(Draft { probs: vec![1.0; tokens.len()], tokens, ..Draft::default() })
    }
}

/// Per emitted token, the first position where the margins of `ar` and a replayed hybrid run differ
/// in any bit, with the context length there.
fn first_bit_difference(prompt: &[TokenId]) -> Option<(usize, usize, f32, f32)> {
    let ar = run(prompt, Mode::Ar, None, 1);
    let mut replay = Replay { prompt_len: prompt.len(), reference: ar.tokens.clone() };
    let hybrid = run(prompt, Mode::Hybrid, Some(&mut replay), 4);
    assert_eq!(hybrid.tokens, ar.tokens, "greedy output differs");
    assert!(hybrid.stats.accepted > hybrid.stats.drafted / 2, "the replay was not accepted");
    ar.choices
        .iter()
        .zip(&hybrid.choices)
        .enumerate()
        .find(|(_, (a, h))| a.margin.to_bits() != h.margin.to_bits())
        .map(|(i, (a, h))| (i, prompt.len() + i, a.margin, h.margin))
}

#[test]
fn tokens_verified_in_blocks_have_the_logits_of_plain_steps_bit_for_bit() {
    let prompts = load_prompts("lossless_prompts.jsonl");
    for p in prompts.iter().take(4) {
        let prompt = prompt_tokens(small_verifier(), p);
        assert!(prompt.len() + MAX_TOKENS < 256, "{}: keep below 256 cached tokens", p.id);
        if let Some((i, ctx, a, h)) = first_bit_difference(&prompt) {
            panic!("{}: token {i} (context {ctx}): margin {a} alone, {h} in a block", p.id);
        }
    }
}

/// Past 256 cached tokens llama.cpp's CPU flash attention takes a split-KV path for one-row calls
/// only (see README, "The lossless guarantee"). Fails today (2026-11-29: prompt of 326 tokens, every
/// margin from token 1 on differs; the greedy tokens still agreed); it passes once the gap is fixed.
/// Run alone (`--ignored --test-threads=1`): the other test's sessions would share its decode calls.
#[test]
#[ignore = "known gap past 256 cached tokens: fails until the split-KV attention path is made batch-invariant"]
fn past_256_cached_tokens() {
    let base = &load_prompts("lossless_prompts.jsonl")[9];
    let long = TestPrompt { id: "long".into(), prompt: [base.prompt.as_str(); 3].join("\n\n"), chat: base.chat };
    let prompt = prompt_tokens(small_verifier(), &long);
    assert!(prompt.len() > 256, "prompt has {} tokens", prompt.len());
    match first_bit_difference(&prompt) {
        Some((i, ctx, a, h)) => panic!("prompt {} tokens; token {i} (context {ctx}): margin {a} alone, {h} in a block", prompt.len()),
        None => eprintln!("prompt {} tokens: every margin identical", prompt.len()),
    }
}
