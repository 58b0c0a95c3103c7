//! Cost of `Session::verify(draft)` for drafts of k tokens: the pending token plus k drafts in one
//! llama.cpp decode call with logits at every position, the longest greedy prefix accepted, the
//! rejected positions removed from the KV cache. k = 0 is a plain decode step, so verify(k) / verify(0)
//! is the verifier cost curve c(k) that `duet bench` also measures.
//!
//! The model: `DUET_VERIFIER_MODEL`, else `models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf` (the
//! default verifier); threads: `DUET_THREADS`, else all cores. The drafts are tokens the verifier
//! rejects at once, so every call pays for the whole block and a rollback and the session grows by
//! one token per call; it is re-prefilled (untimed) before its context fills.
//!
//! Run: `cargo bench -p duet-verifier --bench verify_k`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duet_verifier::{Session, TokenId, Verifier, VerifierConfig};

const PROMPT: &str = "def binary_search(items, target):\n    \"\"\"Return the index of target in the sorted list items, or -1.\"\"\"\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n";

fn model_path() -> PathBuf {
    std::env::var_os("DUET_VERIFIER_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    })
}

fn verify_k(c: &mut Criterion) {
    let path = model_path();
    if !path.is_file() {
        eprintln!("verify_k: {} is missing (scripts/fetch-models.sh, or set DUET_VERIFIER_MODEL); nothing measured", path.display());
        return;
    }
    let mut cfg = VerifierConfig::new(&path);
    cfg.max_sessions = 1;
    cfg.ctx_size = 2048;
    if let Some(t) = std::env::var("DUET_THREADS").ok().and_then(|t| t.parse().ok()) {
        cfg.threads = t;
    }
    let verifier = Verifier::load(cfg).expect("loading the verifier");
    let prompt = verifier.tokenize(PROMPT, false).expect("tokenize");
    let mut session = verifier.open_session().expect("session");
    let reprefill = |s: &mut Session| {
        s.prefill(&prompt).expect("prefill");
    };
    reprefill(&mut session);
    // Tokens of the prompt in reverse: almost never the verifier's next choice.
    let filler: Vec<TokenId> = prompt.iter().rev().copied().cycle().take(32).collect();

    let mut group = c.benchmark_group("verify_k");
    for k in [0usize, 1, 2, 4, 8, 16, 32] {
        group.bench_with_input(BenchmarkId::from_parameter(k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if session.room() < k + 2 {
                        reprefill(&mut session);
                    }
                    let t = Instant::now();
                    std::hint::black_box(session.verify(&filler[..k]).expect("verify"));
                    total += t.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = verify_k
}
criterion_main!(benches);
