//! The caller's side of the verifier thread: a cloneable [`Verifier`] handle and per-generation
//! [`Session`]s. Every call sends one command over a bounded channel and blocks on its own reply
//! channel, so callers never touch llama.cpp and the context never leaves its thread.

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use crate::gather::GatherWindow;
use crate::greedy::Choice;
use crate::sampling::{SamplingParams, SparseDist};
use crate::vocab::{ChatMessage, ModelInfo};
use crate::worker::{self, Command, Usage};
use crate::{TokenId, VerifierConfig, VerifierError};

/// Commands waiting for the verifier thread before senders block.
const QUEUE_DEPTH: usize = 64;

/// A handle to a loaded verifier model. Cheap to clone; the model stays loaded while any handle or
/// session lives.
#[derive(Clone)]
pub struct Verifier {
    tx: SyncSender<Command>,
    info: Arc<ModelInfo>,
    window: GatherWindow,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("model", &self.info.path).finish()
    }
}

/// The outcome of verifying one draft block.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Draft tokens accepted (a prefix of the block).
    pub accepted: usize,
    /// The verifier's own next token: the correction at the first rejected position, or the bonus
    /// token after a fully accepted block. It becomes the session's pending token.
    pub next: Choice,
    /// The verifier's greedy choices at every position it kept: `accepted + 1` entries, the last
    /// being `next`. Their margins show how close each decision was to a tie.
    pub choices: Vec<Choice>,
    /// With [`VerifierConfig::features`]: the final hidden state of every token this call added to
    /// the KV cache (`n_embd` floats per token, in position order); empty otherwise. For `prefill`
    /// these are the tokens it evaluated (the whole prompt on a fresh session); for `verify`, the
    /// pending token and the accepted drafts.
    pub features: Vec<f32>,
    /// When sampling with `top_k` between 1 and [`REPORTED_SUPPORT_LIMIT`]: the processed
    /// distribution `next` was drawn from, so that a drafting model can report its q exactly.
    /// Empty otherwise (greedy decoding, or a support too large to send around).
    ///
    /// [`REPORTED_SUPPORT_LIMIT`]: crate::REPORTED_SUPPORT_LIMIT
    pub next_dist: SparseDist,
    /// The decode call that evaluated this block, which other sessions' blocks may have shared;
    /// all zero for `prefill`. The engine prices its next draft by it.
    pub batch: BatchShare,
}

/// What one decode call of the verifier held: under concurrency the verifier evaluates the blocks
/// of several sessions in one call, and a session's draft rows then lengthen every session's step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchShare {
    /// Sessions whose blocks the call evaluated (1 when a block was alone).
    pub blocks: usize,
    /// Tokens the call evaluated over all blocks (each block's pending token and drafts).
    pub rows: usize,
    /// Tokens the call gave all sessions together: per block, its accepted drafts plus one.
    pub gained: usize,
}

impl Verifier {
    /// Loads the model on a new dedicated thread and waits until it is ready or has failed.
    pub fn load(config: VerifierConfig) -> Result<Self, VerifierError> {
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = sync_channel(1);
        let window = GatherWindow::new(config.gather_window);
        let worker_window = window.clone();
        std::thread::Builder::new()
            .name("duet-verifier".into())
            .spawn(move || worker::run(config, worker_window, rx, ready_tx))
            .map_err(|e| VerifierError::Backend { op: "spawn thread", reason: e.to_string() })?;
        let info = ready_rx.recv().map_err(|_| VerifierError::WorkerGone)??;
        Ok(Self { tx, info: Arc::new(info), window })
    }

    /// Changes how long the verifier thread waits for other open sessions' blocks after taking one
    /// ([`VerifierConfig::gather_window`]); applies from the next block on, for every handle.
    pub fn set_gather_window(&self, window: Duration) {
        self.window.set(window);
    }

    /// The current gather window.
    pub fn gather_window(&self) -> Duration {
        self.window.get()
    }

    /// Facts about the loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Tokenises text with the model's own tokenizer; with `parse_special`, special-token text such
    /// as `<|im_start|>` becomes the special token.
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<TokenId>, VerifierError> {
        self.call(|reply| Command::Tokenize { text: text.to_owned(), parse_special, reply })
    }

    /// Formats chat messages with the model's chat template, ending with an open assistant turn.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, VerifierError> {
        let messages = self.info.with_default_system(messages);
        self.call(|reply| Command::ChatPrompt { messages, reply })
    }

    /// Opens a session (one llama.cpp sequence with its own KV cache).
    pub fn open_session(&self) -> Result<Session, VerifierError> {
        let id = self.call(|reply| Command::Open { reply })?;
        Ok(Session { id, closed: false, len: 0, verifier: self.clone(), sampling: SamplingParams::default() })
    }

    /// Sessions open, tokens cached and decode calls so far (for metrics and leak checks).
    pub fn usage(&self) -> Result<Usage, VerifierError> {
        self.call(|reply| Command::Usage { reply })
    }

    fn call<T>(
        &self,
        make: impl FnOnce(SyncSender<Result<T, VerifierError>>) -> Command,
    ) -> Result<T, VerifierError> {
        let (reply, rx) = sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| VerifierError::WorkerGone)?;
        rx.recv().map_err(|_| VerifierError::WorkerGone)?
    }
}

/// One generation's sequence on the verifier. Holds the tokens in the KV cache and one pending token
/// (the verifier's choice for the next position, not yet evaluated). Dropping it frees the sequence.
#[derive(Debug)]
pub struct Session {
    /// The verifier thread's id for the session (not the llama.cpp sequence id, which may change).
    id: i32,
    /// Set by [`Session::close`], so that dropping does not close it again.
    closed: bool,
    len: usize,
    verifier: Verifier,
    sampling: SamplingParams,
}

impl Session {
    /// Makes the KV cache hold exactly `tokens` (reusing the longest prefix already cached and
    /// removing the rest) and returns the verifier's choice for the next position, which becomes the
    /// pending token. Used for the prompt and to re-synchronise a drafting model with the context.
    pub fn prefill(&mut self, tokens: &[TokenId]) -> Result<Verdict, VerifierError> {
        let (id, sampling) = (self.id, self.sampling);
        let verdict = self.verifier.call(|reply| Command::Feed { id, tokens: tokens.to_vec(), sampling, reply })?;
        self.len = tokens.len();
        Ok(verdict)
    }

    /// Evaluates the pending token alone (plain autoregressive decoding): a verification of an
    /// empty draft.
    pub fn step(&mut self) -> Result<Verdict, VerifierError> {
        self.verify(&[])
    }

    /// Evaluates the pending token and `draft` in one decode call, accepts the longest matching
    /// prefix, and removes the rejected positions from the KV cache. When sampling, the draft
    /// tokens are judged as deterministic (see [`Session::verify_with`]).
    pub fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        self.verify_with(draft, &[])
    }

    /// [`Session::verify`] with the distribution each draft token was drawn from (`q[i]` for draft
    /// token i; missing or empty entries mean deterministic). Greedy decoding ignores `q`; sampling
    /// accepts by speculative rejection sampling ([`crate::speculative`]), which keeps the output
    /// distributed exactly as sampling from the verifier alone.
    pub fn verify_with(&mut self, draft: &[TokenId], q: &[SparseDist]) -> Result<Verdict, VerifierError> {
        let (id, sampling) = (self.id, self.sampling);
        let q = if sampling.is_greedy() { Vec::new() } else { q.to_vec() };
        let verdict =
            self.verifier.call(|reply| Command::Verify { id, draft: draft.to_vec(), q, sampling, reply })?;
        self.len += 1 + verdict.accepted;
        Ok(verdict)
    }

    /// Sets how this session picks its tokens from the next call on (greedy by default). The seed
    /// keys every draw by token position, so the same settings give the same tokens.
    pub fn set_sampling(&mut self, sampling: SamplingParams) -> Result<(), VerifierError> {
        sampling.validate().map_err(VerifierError::InvalidRequest)?;
        self.sampling = sampling;
        Ok(())
    }

    /// The session's sampling settings.
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }

    /// Times the verification of blocks of each of `sizes` draft tokens on top of the current
    /// context (after `prefill`), best of `repeats`, in seconds; the session is left unchanged.
    /// Size 0 is a plain decoding step. Feeds the cost-aware draft length.
    pub fn measure_verify_times(&mut self, sizes: &[usize], repeats: usize) -> Result<Vec<f64>, VerifierError> {
        let id = self.id;
        self.verifier.call(|reply| Command::Measure { id, sizes: sizes.to_vec(), repeats, reply })
    }

    /// Teacher forcing: evaluates `tokens` (at most the batch size) from an empty cache and returns
    /// the verifier's greedy choice after every position and, with features on, every position's
    /// hidden state. The session is left empty. Used to build drafter training data.
    pub fn score(&mut self, tokens: &[TokenId]) -> Result<(Vec<Choice>, Vec<f32>), VerifierError> {
        let id = self.id;
        let out = self.verifier.call(|reply| Command::Score { id, tokens: tokens.to_vec(), reply })?;
        self.len = 0;
        Ok(out)
    }

    /// Tokens in the KV cache (the pending token not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been evaluated yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens the session can still hold before its context is full.
    pub fn room(&self) -> usize {
        self.verifier.info.ctx_size.saturating_sub(self.len)
    }

    /// The verifier this session runs on.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Frees the session and waits until the verifier has done so (and moved the sessions above it
    /// down, see `Worker::close`), where dropping it does not wait: for callers that time the
    /// verifier's work and must not leave this to land in someone else's call.
    pub fn close(mut self) -> Result<(), VerifierError> {
        self.closed = true;
        let id = self.id;
        self.verifier.call(|reply| Command::Close { id, reply: Some(reply) })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The worker may already be gone at process exit; nothing is left to free then.
        if !self.closed {
            let _ = self.verifier.tx.send(Command::Close { id: self.id, reply: None });
        }
    }
}
