//! Batch invariance at the level of bits: a token the verifier evaluates inside a verification block
//! gets exactly the logits it gets in a plain one-token step, so the greedy choice cannot depend on
//! how the drafts were grouped — not only on the prompts where no near-tie happened to show it.
//! Checked through the margins (best logit − runner-up) the engine records for every emitted token.

use duet_orchestrator::engine::{self, Draft, DraftError, DraftRequest, Drafter, GenerateParams, Generation, Mode};
use duet_tests::{Reference, TestPrompt, certain_draft, load_prompts, load_small_verifier, prompt_tokens, small_verifier};
use duet_verifier::{Choice, Session, TokenId};

const MAX_TOKENS: usize = 48;

fn run(prompt: &[TokenId], mode: Mode, drafter: Option<&mut dyn Drafter>, block_size: usize, max_tokens: usize) -> Generation {
    let v = small_verifier();
    let mut session = v.open_session().expect("session");
    let params = GenerateParams { max_tokens, mode, block_size, ..GenerateParams::default() };
    engine::generate(&mut session, drafter, prompt, &params, &|t| v.info().is_eog(t), &mut |_| true).expect("generate")
}

/// Proposes the verifier-only continuation exactly: every block is accepted whole, so every token
/// after the first of a round is evaluated as a row of a multi-row block.
struct Replay(Reference);

impl Drafter for Replay {
    fn name(&self) -> &str {
        "replay"
    }
    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        Ok(certain_draft(self.0.next_block(req)))
    }
}

/// Per emitted token, the first position where the margins of `ar` and a hybrid run replaying its
/// output in blocks of `block` drafts differ in any bit, with the context length there.
fn first_bit_difference(prompt: &[TokenId], block: usize, max_tokens: usize) -> Option<(usize, usize, f32, f32)> {
    let ar = run(prompt, Mode::Ar, None, 1, max_tokens);
    let mut replay = Replay(Reference { prompt_len: prompt.len(), tokens: ar.tokens.clone() });
    let hybrid = run(prompt, Mode::Hybrid, Some(&mut replay), block, max_tokens);
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
        if let Some((i, ctx, a, h)) = first_bit_difference(&prompt, 4, MAX_TOKENS) {
            panic!("{}: token {i} (context {ctx}): margin {a} alone, {h} in a block", p.id);
        }
    }
}

/// Past 256 cached tokens an all-F16 KV cache makes llama.cpp's CPU flash attention split one-row
/// calls (plain steps) across threads, and only those (see README, "The lossless guarantee"). With
/// it this failed (2026-11-29: prompt of 326 tokens, every margin from token 1 on differed, the
/// greedy tokens still agreed); the default Q8_0-key cache takes the per-row kernel at every length.
#[test]
fn past_256_cached_tokens() {
    let base = &load_prompts("lossless_prompts.jsonl")[9];
    let long = TestPrompt { id: "long".into(), prompt: [base.prompt.as_str(); 3].join("\n\n"), chat: base.chat };
    let prompt = prompt_tokens(small_verifier(), &long);
    assert!(prompt.len() > 256, "prompt has {} tokens", prompt.len());
    if let Some((i, ctx, a, h)) = first_bit_difference(&prompt, 4, MAX_TOKENS) {
        panic!("prompt {} tokens; token {i} (context {ctx}): margin {a} alone, {h} in a block", prompt.len());
    }
}

/// A block of 64 rows or more is where an all-F16 cache would switch to a tiled attention kernel.
#[test]
fn a_block_of_64_drafts_has_the_logits_of_plain_steps() {
    let p = &load_prompts("lossless_prompts.jsonl")[0];
    let prompt = prompt_tokens(small_verifier(), p);
    assert!(prompt.len() + 80 < 256, "{}: keep below 256 cached tokens", p.id);
    if let Some((i, ctx, a, h)) = first_bit_difference(&prompt, 64, 80) {
        panic!("{}: token {i} (context {ctx}): margin {a} alone, {h} in a block of 64", p.id);
    }
}

/// Decode calls shared with other sessions (concurrent requests) hold one row per stream; with an
/// all-F16 cache past 256 tokens a lone step split its KV range and a shared one did not, so a request
/// could decode differently beside others than alone. The default cache computes both alike.
#[test]
fn a_session_past_256_tokens_decodes_beside_another_as_it_does_alone() {
    let prompts = load_prompts("lossless_prompts.jsonl");
    let long = |p: &TestPrompt| TestPrompt { id: p.id.clone(), prompt: [p.prompt.as_str(); 3].join("\n\n"), chat: p.chat };
    let (a, b) = (prompt_tokens(small_verifier(), &long(&prompts[9])), prompt_tokens(small_verifier(), &long(&prompts[1])));
    assert!(a.len() > 256, "prompt has {} tokens", a.len());
    let alone = run(&a, Mode::Ar, None, 1, MAX_TOKENS);
    let (beside, _) = std::thread::scope(|s| {
        let other = s.spawn(|| run(&b, Mode::Ar, None, 1, MAX_TOKENS + 16));
        let mine = run(&a, Mode::Ar, None, 1, MAX_TOKENS);
        (mine, other.join().expect("other session"))
    });
    assert!(beside.stats.batch_blocks > beside.stats.rounds, "the sessions never shared a decode call");
    assert_eq!(beside.tokens, alone.tokens, "greedy output differs beside another session");
    let diff = alone.choices.iter().zip(&beside.choices).position(|(x, y)| x.margin.to_bits() != y.margin.to_bits());
    if let Some(i) = diff {
        panic!("token {i} (context {}): margin {} alone, {} beside another session", a.len() + i, alone.choices[i].margin, beside.choices[i].margin);
    }
}

/// `n` plain steps of a session: the verifier's choice at each.
fn steps(session: &mut Session, n: usize) -> Vec<Choice> {
    (0..n).map(|_| session.step().expect("step").next).collect()
}

/// The first choice where two runs differ in token or in any bit of the margin.
fn first_difference(a: &[Choice], b: &[Choice]) -> Option<usize> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).position(|(x, y)| x.token != y.token || x.margin.to_bits() != y.margin.to_bits())
}

/// When a session closes, the verifier moves every session above it one llama.cpp sequence id down
/// (a copy of its cache cells into the lower KV stream), so that shared decode calls stay in one
/// micro-batch. A moved session must go on computing the same bits, and a session opened in the
/// stream one left must start clean.
#[test]
fn a_session_moved_to_a_freed_sequence_id_decodes_bit_for_bit_as_before() {
    let v = load_small_verifier(512, 3);
    let prompts = load_prompts("lossless_prompts.jsonl");
    let (a, b) = (prompt_tokens(&v, &prompts[2]), prompt_tokens(&v, &prompts[3]));
    let alone = |prompt: &[TokenId], n: usize| {
        let mut s = v.open_session().expect("session");
        let mut out = vec![s.prefill(prompt).expect("prefill").next];
        out.extend(steps(&mut s, n));
        out
    };
    let (alone_a, alone_b) = (alone(&a, 24), alone(&b, 12));

    // Sequence ids 0, 1, 2; the third session is the one that moves.
    let mut s0 = v.open_session().expect("session");
    s0.prefill(&b).expect("prefill");
    let mut s1 = v.open_session().expect("session");
    s1.prefill(&a).expect("prefill");
    let mut s2 = v.open_session().expect("session");
    let mut moved = vec![s2.prefill(&a).expect("prefill").next];
    moved.extend(steps(&mut s2, 8));
    let before = v.usage().expect("usage").session_moves;
    drop(s0); // s1 and s2 move to ids 0 and 1
    let mut s3 = v.open_session().expect("session"); // id 2, the stream s2 left
    let mut fresh = vec![s3.prefill(&b).expect("prefill").next];
    moved.extend(steps(&mut s2, 8));
    fresh.extend(steps(&mut s3, 6));
    s1.close().expect("close"); // s2 and s3 move to ids 0 and 1
    moved.extend(steps(&mut s2, 8));
    fresh.extend(steps(&mut s3, 6));
    assert_eq!(v.usage().expect("usage").session_moves - before, 4, "the sessions were not moved");
    if let Some(i) = first_difference(&alone_a, &moved) {
        panic!("moved session, token {i}: {:?} alone, {:?} moved", alone_a[i], moved[i]);
    }
    if let Some(i) = first_difference(&alone_b, &fresh) {
        panic!("session opened in the vacated stream, token {i}: {:?} alone, {:?} there", alone_b[i], fresh[i]);
    }
}

/// Blocks of every size the engine sends, 2 to 64 rows: each token after the first of a round sits at
/// another position of its block, so over a generation every position of every size is checked.
#[test]
fn blocks_of_2_to_64_rows_have_the_logits_of_plain_steps_at_every_position() {
    let p = &load_prompts("lossless_prompts.jsonl")[5];
    let prompt = prompt_tokens(small_verifier(), p);
    for block in [1, 2, 6, 15, 31, 63] {
        if let Some((i, ctx, a, h)) = first_bit_difference(&prompt, block, 64) {
            panic!("{}: token {i} (context {ctx}): margin {a} alone, {h} in a block of {} rows", p.id, block + 1);
        }
    }
}

/// A prompt evaluated as one chunk of 512 rows leaves the KV cache that evaluating it one token at a
/// time leaves: the choice after it and every step that follows agree in every bit of the margin.
#[test]
fn a_512_token_prompt_chunk_leaves_the_kv_of_token_by_token_evaluation() {
    let v = small_verifier();
    let prompts = load_prompts("lossless_prompts.jsonl");
    let text = prompts.iter().chain(&prompts).map(|p| p.prompt.as_str()).collect::<Vec<_>>().join("\n\n");
    let mut prompt = v.tokenize(&text, true).expect("tokenize");
    assert!(prompt.len() >= 512, "the joined prompts have {} tokens", prompt.len());
    prompt.truncate(512);

    let mut chunk = v.open_session().expect("session");
    let mut a = vec![chunk.prefill(&prompt).expect("prefill").next];
    a.extend(steps(&mut chunk, 8));
    drop(chunk);

    let mut single = v.open_session().expect("session");
    let mut last = None;
    for n in 1..=prompt.len() {
        // The cached prefix is reused: each call evaluates exactly one new token.
        last = Some(single.prefill(&prompt[..n]).expect("prefill").next);
    }
    let mut b = vec![last.expect("one token at least")];
    b.extend(steps(&mut single, 8));
    if let Some(i) = first_difference(&a, &b) {
        panic!("choice {i} after the prompt: {:?} after one chunk, {:?} token by token", a[i], b[i]);
    }
}
