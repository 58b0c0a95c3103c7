//! A scripted stand-in for the models, so transports (HTTP, gRPC) can test their routes and error
//! mapping in milliseconds without loading a model.
//!
//! Tokens are bytes (ids 0–255) plus a few special tokens; whatever the prompt, the "model" writes
//! its script and then an end-of-generation token. Verification is real greedy verification against
//! the script, so hybrid mode with the n-gram drafter accepts and rejects drafts as usual.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use duet_verifier::{ChatMessage, Choice, TokenId, Verdict, VerifierError};

use crate::drafters::{DrafterKind, NgramDrafter};
use crate::engine::{Drafter, Mode, VerifierSession};

use super::{Backend, FIM_MARKERS, ServiceError};

/// The end-of-generation token.
pub const EOG: TokenId = 256;
/// Special tokens after the bytes: EOG, then the FIM markers.
const SPECIALS: [&str; 4] = ["<|endoftext|>", FIM_MARKERS[0], FIM_MARKERS[1], FIM_MARKERS[2]];

/// A backend that writes a fixed script.
#[derive(Debug, Clone)]
pub struct ScriptedBackend {
    name: String,
    script: Vec<TokenId>,
    /// The token after the script: it ends the generation.
    end: TokenId,
    ctx_size: usize,
    gate: Gate,
    /// Verification fails once this many tokens are out (a verifier crash mid-stream).
    fail_at: Option<usize>,
    /// Verification calls so far, over every clone.
    verifications: Arc<AtomicUsize>,
    /// How long every verification takes (a slow verifier).
    step_delay: std::time::Duration,
}

/// Holds every prefill until opened, so tests can keep sessions busy deterministically.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A gate that starts open or closed.
    pub fn new(open: bool) -> Self {
        Self(Arc::new((Mutex::new(open), Condvar::new())))
    }

    /// Lets every waiting and future prefill through.
    pub fn open(&self) {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    fn wait(&self) {
        let (lock, cv) = &*self.0;
        let mut open = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = cv.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl ScriptedBackend {
    /// A model called `name` that answers every prompt with `script`; sessions hold `ctx_size` tokens.
    pub fn new(name: &str, script: &str, ctx_size: usize) -> Self {
        Self {
            name: name.to_owned(),
            script: script.bytes().map(TokenId::from).collect(),
            end: EOG,
            ctx_size,
            gate: Gate::new(true),
            fail_at: None,
            verifications: Arc::default(),
            step_delay: std::time::Duration::ZERO,
        }
    }

    /// A model that answers every prompt with `script`, token ids of a real vocabulary whose
    /// end-of-generation token is `end` (for replaying a recorded output through the engine).
    pub fn replaying(name: &str, script: Vec<TokenId>, end: TokenId, ctx_size: usize) -> Self {
        Self { script, end, ..Self::new(name, "", ctx_size) }
    }

    /// Makes every verification take `delay`.
    pub fn slowed(mut self, delay: std::time::Duration) -> Self {
        self.step_delay = delay;
        self
    }

    /// Fails verification once `tokens` output tokens exist.
    pub fn failing_at(mut self, tokens: usize) -> Self {
        self.fail_at = Some(tokens);
        self
    }

    /// Holds every generation at its prompt until the returned gate opens.
    pub fn gated(mut self) -> (Self, Gate) {
        self.gate = Gate::new(false);
        let gate = self.gate.clone();
        (self, gate)
    }

    /// Verification calls (AR steps and blocks) made so far by every session.
    pub fn verifications(&self) -> usize {
        self.verifications.load(Ordering::SeqCst)
    }

    /// Tokenizes like [`Backend::tokenize`], without a service.
    pub fn tokens(text: &str) -> Vec<TokenId> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (i, s) in SPECIALS.iter().enumerate() {
                if let Some(r) = rest.strip_prefix(s) {
                    out.push(EOG + i as TokenId);
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().unwrap_or_default();
            out.extend(c.to_string().bytes().map(TokenId::from));
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

impl Backend for ScriptedBackend {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn ctx_size(&self) -> usize {
        self.ctx_size
    }

    fn tokenize(&self, text: &str) -> Result<Vec<TokenId>, ServiceError> {
        Ok(Self::tokens(text))
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, ServiceError> {
        let mut s: String = messages.iter().map(|m| format!("<{}>{}\n", m.role, m.content)).collect();
        s.push_str("<assistant>");
        Ok(s)
    }

    fn infill_prompt(&self, prefix: &str, suffix: &str) -> Result<String, ServiceError> {
        super::fim_prompt("scripted", true, prefix, suffix)
    }

    fn detokenize(&self, tokens: &[TokenId]) -> Vec<u8> {
        tokens.iter().filter(|&&t| t < 256).map(|&t| t as u8).collect()
    }

    fn is_eog(&self, token: TokenId) -> bool {
        token == self.end
    }

    fn check(&self, mode: Mode, drafter: DrafterKind) -> Result<(), ServiceError> {
        match (mode, drafter) {
            (Mode::Ar, _) | (Mode::Hybrid, DrafterKind::Ngram) => Ok(()),
            _ => Err(ServiceError::Invalid(format!("`drafter` {drafter:?} is not loaded on this server"))),
        }
    }

    fn open_session(&self) -> Result<Box<dyn VerifierSession + Send>, ServiceError> {
        Ok(Box::new(ScriptedSession { backend: self.clone(), len: 0, prompt_len: 0, pending: None }))
    }

    fn new_drafter(&self, kind: DrafterKind) -> Result<Box<dyn Drafter>, ServiceError> {
        match kind {
            DrafterKind::Ngram => Ok(Box::new(NgramDrafter::default())),
            other => Err(ServiceError::Invalid(format!("`drafter` {other:?} is not loaded on this server"))),
        }
    }
}

/// One sequence of the scripted model.
struct ScriptedSession {
    backend: ScriptedBackend,
    /// Tokens "in the cache".
    len: usize,
    prompt_len: usize,
    pending: Option<TokenId>,
}

impl ScriptedSession {
    /// The script's token at output position `i`.
    fn at(&self, i: usize) -> Choice {
        let token = self.backend.script.get(i).copied().unwrap_or(self.backend.end);
        Choice { token, prob: 1.0, margin: 1.0 }
    }
}

impl VerifierSession for ScriptedSession {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.backend.gate.wait();
        self.len = prompt.len();
        self.prompt_len = prompt.len();
        let c = self.at(0);
        self.pending = Some(c.token);
        Ok(Verdict { accepted: 0, next: c, choices: vec![c], features: vec![], next_dist: vec![], batch: Default::default() })
    }

    fn step(&mut self) -> Result<Verdict, VerifierError> {
        self.verify(&[])
    }

    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.backend.verifications.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.backend.step_delay);
        if self.pending.is_none() {
            return Err(VerifierError::InvalidRequest("verify before prefill".into()));
        }
        if self.len + 1 + draft.len() > self.backend.ctx_size {
            return Err(VerifierError::ContextFull { what: "a block", needed: self.len + 1 + draft.len(), limit: self.backend.ctx_size });
        }
        // Output position of the first draft token.
        let base = self.len + 1 - self.prompt_len;
        if self.backend.fail_at.is_some_and(|n| base >= n) {
            return Err(VerifierError::Backend { op: "decode", reason: "scripted failure".into() });
        }
        let accepted = draft.iter().enumerate().take_while(|&(i, &t)| self.at(base + i).token == t).count();
        let choices: Vec<Choice> = (0..=accepted).map(|i| self.at(base + i)).collect();
        let next = choices[accepted];
        self.len += 1 + accepted;
        self.pending = Some(next.token);
        Ok(Verdict { accepted, next, choices, features: vec![], next_dist: vec![], batch: Default::default() })
    }

    fn room(&self) -> usize {
        self.backend.ctx_size.saturating_sub(self.len)
    }
}
