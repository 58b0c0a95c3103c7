//! The invariant that matters most: greedy hybrid output is token-identical to verifier-only output,
//! with the real Qwen2.5-Coder-0.5B model, on varied prompts (code, prose, chat, copy-heavy edits).
//!
//! Duet makes verification batch-invariant (llama.cpp built without weight repacking, tiled kernels
//! off, flash attention on), so this test demands exact equality: no tolerance for near-ties.

use duet_orchestrator::drafters::NgramDrafter;
use duet_orchestrator::engine::{self, Draft, DraftError, DraftRequest, Drafter, GenerateParams, Generation, Mode};
use duet_tests::{Reference, TestPrompt, certain_draft, load_prompts, prompt_tokens, small_verifier};

const MAX_TOKENS: usize = 80;
const MIN_TOKENS: usize = 64;

fn run(p: &TestPrompt, mode: Mode, drafter: Option<&mut dyn Drafter>, block_size: usize) -> Generation {
    let v = small_verifier();
    let prompt = prompt_tokens(v, p);
    let mut session = v.open_session().expect("session");
    let params = GenerateParams { max_tokens: MAX_TOKENS, mode, block_size, ..GenerateParams::default() };
    engine::generate(&mut session, drafter, &prompt, &params, &|t| v.info().is_eog(t), &mut |_| true)
        .unwrap_or_else(|e| panic!("{}: {e}", p.id))
}

/// Proposes the verifier-only continuation with one token corrupted in about half of the blocks, at
/// a pseudo-random position: long fully accepted blocks and rejections at every block position, the
/// hardest case for batch invariance and KV rollback.
struct CorruptedOracle {
    reference: Reference,
    rng: u64,
}

impl Drafter for CorruptedOracle {
    fn name(&self) -> &str {
        "corrupted-oracle"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        let mut tokens = self.reference.next_block(req);
        self.rng = self.rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let r = (self.rng >> 33) as usize;
        if !tokens.is_empty() && r.is_multiple_of(2) {
            let at = (r / 2) % tokens.len();
            tokens[at] = (tokens[at] + 1 + (r as u32 % 5000)) % 150_000;
        }
        Ok(certain_draft(tokens))
    }
}

fn describe_divergence(id: &str, what: &str, ar: &Generation, other: &Generation) -> String {
    let at = ar.tokens.iter().zip(&other.tokens).position(|(a, b)| a != b).unwrap_or(ar.tokens.len().min(other.tokens.len()));
    let margin = |g: &Generation| g.choices.get(at).map(|c| c.margin);
    format!(
        "{id}: {what} diverges from ar at generated token {at} (ar {:?} margin {:?}, {what} {:?} margin {:?})",
        ar.tokens.get(at),
        margin(ar),
        other.tokens.get(at),
        margin(other)
    )
}

#[test]
fn greedy_hybrid_equals_ar_on_real_prompts() {
    let prompts = load_prompts("lossless_prompts.jsonl");
    assert!(prompts.len() >= 10);
    let mut failures = Vec::new();
    let (mut drafted, mut accepted) = (0, 0);
    for p in &prompts {
        let ar = run(p, Mode::Ar, None, 1);
        assert!(ar.tokens.len() >= MIN_TOKENS, "{}: only {} tokens; pick a prompt that runs longer", p.id, ar.tokens.len());

        let ngram = run(p, Mode::Hybrid, Some(&mut NgramDrafter::default()), 8);
        if ngram.tokens != ar.tokens {
            failures.push(describe_divergence(&p.id, "ngram", &ar, &ngram));
        }
        let prompt_len = prompt_tokens(small_verifier(), p).len();
        for block in [4, 16] {
            let mut oracle = CorruptedOracle { reference: Reference { prompt_len, tokens: ar.tokens.clone() }, rng: block as u64 };
            let g = run(p, Mode::Hybrid, Some(&mut oracle), block);
            drafted += g.stats.drafted;
            accepted += g.stats.accepted;
            if g.tokens != ar.tokens {
                failures.push(describe_divergence(&p.id, &format!("oracle block {block}"), &ar, &g));
            }
        }
    }
    assert!(failures.is_empty(), "hybrid output differs from ar:\n{}", failures.join("\n"));
    // The oracle must have exercised both long accepted runs and rejections.
    assert!(accepted > drafted / 3 && accepted < drafted, "accepted {accepted} of {drafted}");
}
