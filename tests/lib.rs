//! Helpers shared by the end-to-end tests: where the real models are, one shared verifier per test
//! binary, and the prompt suites in `tests/data/`.
//!
//! These tests use the real Qwen2.5-Coder-0.5B model. They fail (not skip) when it is missing:
//! `scripts/fetch-models.sh` (run by `.ci/run`) puts it in `models/`.

pub mod chi_square;

use std::path::PathBuf;
use std::sync::OnceLock;

use duet_orchestrator::engine::{Draft, DraftRequest};
use duet_verifier::{ChatMessage, TokenId, Verifier, VerifierConfig};
use serde::Deserialize;

/// The models directory: `$DUET_MODELS_DIR` or `models/` at the workspace root.
pub fn models_dir() -> PathBuf {
    std::env::var_os("DUET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// The small real verifier used by the tests.
pub fn small_model_path() -> PathBuf {
    let p = models_dir().join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh qwen-0.5b", p.display());
    p
}

/// One loaded 0.5B verifier shared by every test of a binary (the model loads once).
pub fn small_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| load_small_verifier(2048, 8))
}

/// A 0.5B verifier of its own, for a test that needs to know every session it holds.
pub fn load_small_verifier(ctx_size: u32, max_sessions: u32) -> Verifier {
    let mut cfg = VerifierConfig::new(small_model_path());
    cfg.ctx_size = ctx_size;
    cfg.max_sessions = max_sessions;
    // On a machine shared with other builds, llama.cpp's threads wait on each other whenever one
    // is descheduled; `DUET_TEST_THREADS=1` keeps the tests' speed predictable there.
    if let Some(t) = std::env::var("DUET_TEST_THREADS").ok().and_then(|t| t.parse().ok()) {
        cfg.threads = t;
    }
    Verifier::load(cfg).expect("loading the 0.5B verifier")
}

/// One prompt of a test suite.
#[derive(Debug, Clone, Deserialize)]
pub struct TestPrompt {
    /// Short name.
    pub id: String,
    /// The text.
    pub prompt: String,
    /// Whether it goes through the chat template.
    #[serde(default)]
    pub chat: bool,
}

/// Reads a JSONL suite from `tests/data/`.
pub fn load_prompts(file: &str) -> Vec<TestPrompt> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line in {file}: {e}: {l}")))
        .collect()
}

/// The prompt's tokens as `duet generate` builds them (chat template applied where asked).
pub fn prompt_tokens(v: &Verifier, p: &TestPrompt) -> Vec<TokenId> {
    let text = if p.chat {
        v.chat_prompt(&[ChatMessage { role: "user".into(), content: p.prompt.clone() }]).expect("chat template")
    } else {
        p.prompt.clone()
    };
    v.tokenize(&text, true).expect("tokenize")
}

/// A verifier-only continuation that test drafters replay, so that their drafts are accepted whole
/// (or rejected exactly where a test corrupts them).
pub struct Reference {
    /// Tokens of the prompt the continuation follows.
    pub prompt_len: usize,
    /// The continuation.
    pub tokens: Vec<TokenId>,
}

impl Reference {
    /// The next `req.max_len` tokens of the continuation after the request's context (fewer near
    /// its end, none past it).
    pub fn next_block(&self, req: &DraftRequest<'_>) -> Vec<TokenId> {
        let done = req.context.len() - self.prompt_len;
        let end = (done + req.max_len).min(self.tokens.len());
        self.tokens.get(done..end).unwrap_or(&[]).to_vec()
    }
}

/// A draft whose every token the drafter claims to be certain of.
pub fn certain_draft(tokens: Vec<TokenId>) -> Draft {
    Draft { probs: vec![1.0; tokens.len()], tokens, ..Draft::default() }
}
