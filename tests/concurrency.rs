//! Several generations on one verifier at once: their blocks share llama.cpp decode calls, and each
//! output is still token-identical to the same request run alone. Real Qwen2.5-Coder-0.5B.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use duet_orchestrator::drafters::NgramDrafter;
use duet_orchestrator::engine::{self, Drafter, GenerateParams, Mode};
use duet_tests::{load_prompts, prompt_tokens, small_model_path};
use duet_verifier::{BatchShare, TokenId, Verdict, Verifier, VerifierConfig};

const MAX_TOKENS: usize = 48;

fn verifier(gather_window: Duration) -> Verifier {
    let mut cfg = VerifierConfig::new(small_model_path());
    cfg.ctx_size = 1024;
    cfg.max_sessions = 4;
    cfg.gather_window = gather_window;
    Verifier::load(cfg).expect("loading the 0.5B verifier")
}

fn generate(v: &Verifier, prompt: &[TokenId], mode: Mode) -> Vec<TokenId> {
    let mut session = v.open_session().expect("session");
    let mut ngram = NgramDrafter::default();
    let drafter = (mode == Mode::Hybrid).then_some(&mut ngram as &mut dyn Drafter);
    let params = GenerateParams { max_tokens: MAX_TOKENS, mode, block_size: 6, ..GenerateParams::default() };
    engine::generate(&mut session, drafter, prompt, &params, &|t| v.info().is_eog(t), &mut |_| true)
        .expect("generation")
        .tokens
}

#[test]
fn blocks_of_two_sessions_share_one_decode_and_keep_their_verdicts() {
    // A long window makes the grouping certain: the thread waits for the second session's block.
    let v = verifier(Duration::from_secs(20));
    let prompts = load_prompts("lossless_prompts.jsonl");
    let contexts: Vec<Vec<TokenId>> = prompts.iter().take(2).map(|p| prompt_tokens(&v, p)).collect();
    let drafts: [&[TokenId]; 2] = [&[11, 12, 13], &[220]];

    // Alone, one after the other.
    let mut alone = Vec::new();
    for (ctx, draft) in contexts.iter().zip(drafts) {
        let mut s = v.open_session().expect("session");
        s.prefill(ctx).expect("prefill");
        alone.push(s.verify(draft).expect("verify"));
    }
    let before = v.usage().expect("usage");

    // Together: both sessions prefilled, then both verify at the same moment.
    let mut sessions: Vec<_> = contexts
        .iter()
        .map(|ctx| {
            let mut s = v.open_session().expect("session");
            s.prefill(ctx).expect("prefill");
            s
        })
        .collect();
    let barrier = Arc::new(Barrier::new(2));
    let together: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter_mut()
            .zip(drafts)
            .map(|(s, draft)| {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    barrier.wait();
                    s.verify(draft).expect("verify")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let after = v.usage().expect("usage");
    assert_eq!(after.verify_blocks - before.verify_blocks, 2);
    assert_eq!(after.verify_decodes - before.verify_decodes, 1, "the two blocks were not decoded together");
    // Each session hears what the whole call held: both blocks, their rows, what both gained.
    let gained: usize = alone.iter().map(|v| v.accepted + 1).sum();
    for (v, draft) in alone.iter().zip(drafts) {
        assert_eq!(v.batch, BatchShare { blocks: 1, rows: 1 + draft.len(), gained: v.accepted + 1 });
    }
    for v in &together {
        assert_eq!(v.batch, BatchShare { blocks: 2, rows: 2 + 3 + 1, gained });
    }
    let unshared = |v: &Verdict| Verdict { batch: BatchShare::default(), ..v.clone() };
    assert_eq!(
        together.iter().map(unshared).collect::<Vec<_>>(),
        alone.iter().map(unshared).collect::<Vec<_>>(),
        "a block decoded with another session's block got a different verdict"
    );

    drop(sessions);
    let idle = v.usage().expect("usage");
    assert_eq!((idle.sessions, idle.kv_tokens), (0, 0), "closed sessions left KV entries behind");
}

#[test]
fn concurrent_generations_equal_their_verifier_only_outputs() {
    let v = verifier(duet_verifier::config::DEFAULT_GATHER_WINDOW);
    let prompts = load_prompts("lossless_prompts.jsonl");
    let jobs: Vec<(String, Vec<TokenId>, Mode)> = prompts
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, p)| (p.id.clone(), prompt_tokens(&v, p), if i == 3 { Mode::Ar } else { Mode::Hybrid }))
        .collect();
    let references: Vec<Vec<TokenId>> = jobs.iter().map(|(_, prompt, _)| generate(&v, prompt, Mode::Ar)).collect();
    let before = v.usage().expect("usage");

    let barrier = Arc::new(Barrier::new(jobs.len()));
    let outputs: Vec<Vec<TokenId>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(_, prompt, mode)| {
                let (v, barrier) = (&v, barrier.clone());
                scope.spawn(move || {
                    barrier.wait();
                    generate(v, prompt, *mode)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let after = v.usage().expect("usage");
    for ((id, _, mode), (out, reference)) in jobs.iter().zip(outputs.iter().zip(&references)) {
        assert_eq!(out, reference, "{id} ({mode:?}) run concurrently differs from its verifier-only output");
    }
    let (decodes, blocks) = (after.verify_decodes - before.verify_decodes, after.verify_blocks - before.verify_blocks);
    eprintln!("concurrent run: {blocks} blocks in {decodes} decode calls");
    assert_eq!((after.sessions, after.kv_tokens), (0, 0), "finished generations left sessions or KV entries");
}
