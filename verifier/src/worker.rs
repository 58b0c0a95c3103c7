//! The verifier thread: owns the llama.cpp backend, model and context, and serves commands one at a
//! time from a bounded channel. `LlamaContext` borrows the model and is not shared, so everything that
//! touches llama.cpp happens here.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;

mod verify;

use crate::gather::{GatherWindow, Gatherer, Joinable, Next};
use crate::greedy::{Choice, choose};
use crate::handle::{BatchShare, Verdict};
use crate::sampling::{SamplingParams, SparseDist, process};
use crate::speculative::sample;
use crate::config::KvCacheKind;
use crate::vocab::{ChatMessage, ModelInfo};
use crate::{TokenId, VerifierConfig, VerifierError, batch_invariance};

type Reply<T> = SyncSender<Result<T, VerifierError>>;

/// A request to the verifier thread; each carries its own reply channel.
pub(crate) enum Command {
    Tokenize { text: String, parse_special: bool, reply: Reply<Vec<TokenId>> },
    ChatPrompt { messages: Vec<ChatMessage>, reply: Reply<String> },
    Open { reply: Reply<i32> },
    /// Frees a session; `reply`, when given, hears once its cache is freed and the others moved.
    Close { id: i32, reply: Option<Reply<()>> },
    Feed { id: i32, tokens: Vec<TokenId>, sampling: SamplingParams, reply: Reply<Verdict> },
    Score { id: i32, tokens: Vec<TokenId>, reply: Reply<(Vec<Choice>, Vec<f32>)> },
    Verify { id: i32, draft: Vec<TokenId>, q: Vec<SparseDist>, sampling: SamplingParams, reply: Reply<Verdict> },
    Measure { id: i32, sizes: Vec<usize>, repeats: usize, reply: Reply<Vec<f64>> },
    Usage { reply: Reply<Usage> },
}

impl Joinable for Command {
    fn joins(&self) -> Option<(i32, usize)> {
        match self {
            Command::Verify { id, draft, .. } => Some((*id, draft.len() + 1)),
            _ => None,
        }
    }
}

/// What the verifier holds now and has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sessions open.
    pub sessions: usize,
    /// Tokens in the KV cache, over every sequence (as llama.cpp reports its positions).
    pub kv_tokens: usize,
    /// Decode calls that evaluated a verification block (or a plain step), since the start.
    pub verify_decodes: u64,
    /// Verification blocks they evaluated: more than `verify_decodes` when sessions shared a batch.
    pub verify_blocks: u64,
    /// Session caches moved one sequence id down when a session below them closed
    /// ([`Worker::close`]), since the start.
    pub session_moves: u64,
}

/// Largest support of a sampled token's distribution that a [`Verdict`] reports (`next_dist`):
/// enough for a drafting model sampling from its top-k, small enough to send around.
pub const REPORTED_SUPPORT_LIMIT: usize = 256;

/// Initialises llama.cpp's backend (once per process) for work outside a verifier thread.
pub(crate) fn init_backend() -> Result<(), VerifierError> {
    backend().map(|_| ())
}

/// llama.cpp's backend may be initialised once per process; every verifier thread shares it.
fn backend() -> Result<&'static LlamaBackend, VerifierError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            batch_invariance::apply();
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| VerifierError::Backend { op: "backend init", reason: e.clone() })
}

/// Thread body: load, report readiness, then serve until every handle is dropped.
pub(crate) fn run(config: VerifierConfig, window: GatherWindow, rx: Receiver<Command>, ready: SyncSender<Result<ModelInfo, VerifierError>>) {
    let started = Instant::now();
    // Declared before the model, so the packed copies of its weights are freed after it.
    let _packed = crate::kernels::packed::Owner::new();
    let loaded = (|| {
        let backend = backend()?;
        check_config(&config)?;
        let model = load_model(backend, &config)?;
        Ok((backend, model))
    })();
    let (backend, model) = match loaded {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let ctx = match new_context(backend, &model, &config) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut info = model_info(&model, &config);
    info.load_s = started.elapsed().as_secs_f64();
    tracing::info!(model = %config.model_path.display(), load_s = info.load_s, "verifier loaded");
    if ready.send(Ok(info)).is_err() {
        return;
    }
    let mut gatherer = Gatherer::new(rx, window);
    let budget = config.batch_size as usize;
    let mut worker = Worker { model: &model, ctx, config, sessions: HashMap::new(), next_id: 0, usage: Usage::default() };
    while let Some(next) = gatherer.next(worker.sessions.len(), budget) {
        match next {
            Next::One(cmd) => worker.handle(cmd),
            Next::Group(cmds) => worker.verify_group(cmds),
        }
    }
}

fn check_config(config: &VerifierConfig) -> Result<(), VerifierError> {
    if !config.model_path.is_file() {
        return Err(VerifierError::ModelMissing(config.model_path.clone()));
    }
    if !(16..=1 << 20).contains(&config.ctx_size) {
        return Err(VerifierError::Config(format!("`ctx_size` must be between 16 and 1048576, got {}", config.ctx_size)));
    }
    if !(1..=crate::config::MAX_SESSIONS).contains(&config.max_sessions) {
        return Err(VerifierError::Config(format!("`max_sessions` must be between 1 and {}, got {}", crate::config::MAX_SESSIONS, config.max_sessions)));
    }
    if !(1..=256).contains(&config.threads) {
        return Err(VerifierError::Config(format!("`threads` must be between 1 and 256, got {}", config.threads)));
    }
    if !(8..=8192).contains(&config.batch_size) {
        return Err(VerifierError::Config(format!("`batch_size` must be between 8 and 8192, got {}", config.batch_size)));
    }
    Ok(())
}

fn load_model(backend: &LlamaBackend, config: &VerifierConfig) -> Result<LlamaModel, VerifierError> {
    LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default()).map_err(|e| {
        VerifierError::ModelLoad { path: config.model_path.clone(), reason: e.to_string() }
    })
}

fn new_context<'m>(
    backend: &LlamaBackend,
    model: &'m LlamaModel,
    config: &VerifierConfig,
) -> Result<LlamaContext<'m>, VerifierError> {
    let n_ctx = config.ctx_size.checked_mul(config.max_sessions).and_then(NonZeroU32::new);
    let params = LlamaContextParams::default()
        .with_n_ctx(n_ctx)
        .with_n_seq_max(config.max_sessions)
        // One KV stream per sequence: a session's cache layout (and so its floating-point results)
        // must not depend on what other sessions do.
        .with_kv_unified(false)
        .with_n_batch(config.batch_size)
        .with_n_ubatch(config.batch_size)
        .with_n_threads(config.threads as i32)
        .with_n_threads_batch(config.threads as i32)
        // Flash attention keeps attention batch-invariant on CPU; without it batches of 2 already differ.
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED)
        // ... as long as keys and values differ in type (the default: Q8_0 keys, F16 values); an
        // all-F16 cache takes other kernels past 256 cached tokens and from 64 rows (`KvCacheKind`).
        .with_type_k(kv_type(config.kv_cache).0)
        .with_type_v(kv_type(config.kv_cache).1)
        // Per-token hidden states for a target-conditioned drafter. (llama.cpp's per-layer inputs are
        // not wired up for the qwen2 architecture, so the final hidden state is what there is.)
        .with_embeddings(config.features)
        .with_pooling_type(LlamaPoolingType::None);
    model.new_context(backend, params).map_err(|e| VerifierError::Context(e.to_string()))
}

/// Key and value types of a KV cache kind.
fn kv_type(kind: KvCacheKind) -> (KvCacheType, KvCacheType) {
    match kind {
        KvCacheKind::Q8KeysF16Values => (KvCacheType::Q8_0, KvCacheType::F16),
        KvCacheKind::Q8_0 => (KvCacheType::Q8_0, KvCacheType::Q8_0),
        KvCacheKind::F16 => (KvCacheType::F16, KvCacheType::F16),
    }
}

fn model_info(model: &LlamaModel, config: &VerifierConfig) -> ModelInfo {
    let vocab = model.vocab();
    let n = vocab.n_tokens().max(0) as usize;
    let mut pieces = Vec::with_capacity(n);
    let mut eog = Vec::new();
    for t in 0..n as i32 {
        let tok = LlamaToken(t);
        if vocab.is_eog(tok) {
            eog.push(t as TokenId);
        }
        pieces.push(vocab.token_to_piece(tok, false, None));
    }
    let chat_template = model.meta_val_str("tokenizer.chat_template").ok();
    let description = model.meta_val_str("general.name").unwrap_or_else(|_| "unnamed model".into());
    ModelInfo {
        path: config.model_path.clone(),
        description,
        n_vocab: n,
        n_layer: model.n_layer(),
        n_embd: model.n_embd().max(0) as u32,
        ctx_size: config.ctx_size as usize,
        kv_cache: Some(config.kv_cache),
        eog,
        pieces,
        chat_template,
        load_s: 0.0,
    }
}

/// Per-session state on the verifier thread.
struct SeqState {
    /// The llama.cpp sequence id (and KV stream) holding the session's cache now; it changes when
    /// the session is moved down to keep the open sessions' ids consecutive.
    slot: i32,
    /// Tokens whose keys and values are in the cache, in position order.
    tokens: Vec<TokenId>,
    /// The verifier's choice for the next position, not yet evaluated.
    pending: Option<TokenId>,
}

struct Worker<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    config: VerifierConfig,
    /// Open sessions by the id their handle knows them by (stable, unlike their slots).
    sessions: HashMap<i32, SeqState>,
    /// The id the next opened session gets.
    next_id: i32,
    /// Counters reported by [`Command::Usage`]; `sessions` and `kv_tokens` are filled on demand.
    usage: Usage,
}

impl Worker<'_> {
    fn handle(&mut self, cmd: Command) {
        // A caller that went away no longer wants its reply; sending into a closed channel is fine.
        match cmd {
            Command::Tokenize { text, parse_special, reply } => {
                let toks = self.model.vocab().tokenize(text.as_bytes(), true, parse_special);
                let _ = reply.send(Ok(toks.into_iter().map(|t| t.0 as TokenId).collect()));
            }
            Command::ChatPrompt { messages, reply } => {
                let _ = reply.send(self.chat_prompt(&messages));
            }
            Command::Open { reply } => {
                let _ = reply.send(self.open());
            }
            Command::Close { id, reply } => {
                self.close(id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Feed { id, tokens, sampling, reply } => {
                let _ = reply.send(self.feed(id, &tokens, &sampling));
            }
            Command::Score { id, tokens, reply } => {
                let _ = reply.send(self.score(id, &tokens));
            }
            cmd @ Command::Verify { .. } => self.verify_group(vec![cmd]),
            Command::Measure { id, sizes, repeats, reply } => {
                let _ = reply.send(self.measure(id, &sizes, repeats));
            }
            Command::Usage { reply } => {
                let _ = reply.send(Ok(self.usage()));
            }
        }
    }

    fn usage(&self) -> Usage {
        let kv_tokens = (0..self.config.max_sessions as i32)
            .map(|seq| {
                let (min, max) = (self.ctx.kv_cache_seq_pos_min(seq), self.ctx.kv_cache_seq_pos_max(seq));
                if min < 0 || max < min { 0 } else { (max - min + 1) as usize }
            })
            .sum();
        Usage { sessions: self.sessions.len(), kv_tokens, ..self.usage }
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, VerifierError> {
        let tmpl = self.model.chat_template(None).map_err(|e| VerifierError::Backend {
            op: "chat template",
            reason: format!("{e} (the model has no usable chat template)"),
        })?;
        let msgs = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VerifierError::InvalidRequest(format!("chat message: {e}")))?;
        self.model
            .apply_chat_template(&tmpl, &msgs, true)
            .map_err(|e| VerifierError::Backend { op: "apply chat template", reason: e.to_string() })
    }

    /// Opens a session in the lowest free slot (with [`Worker::close`] keeping slots compact, the
    /// one after the open sessions') and returns its id.
    fn open(&mut self) -> Result<i32, VerifierError> {
        let slot = (0..self.config.max_sessions as i32)
            .find(|s| !self.sessions.values().any(|st| st.slot == *s))
            .ok_or(VerifierError::NoFreeSession(self.config.max_sessions))?;
        self.remove_from(slot, 0)?;
        let mut id = self.next_id;
        while self.sessions.contains_key(&id) {
            id = id.wrapping_add(1) & i32::MAX;
        }
        self.next_id = id.wrapping_add(1) & i32::MAX;
        self.sessions.insert(id, SeqState { slot, tokens: Vec::new(), pending: None });
        Ok(id)
    }

    /// Frees a session's cache, then moves every session above it one sequence id down, in order.
    /// llama.cpp evaluates a call over separate KV streams in micro-batches of consecutive sequence
    /// ids only, so a gap left mid-range would split every later shared call (three sessions' steps
    /// on the 2-core EPYC: ~130 ms in one micro-batch, ~150 ms in two). Keeping the order, not only
    /// closing the gap, keeps any run of sessions consecutive that was (the bench's modes each hold
    /// one). A move copies the session's cells, in position order and bytes alike, into the lower
    /// stream, where they take the same cell indices: the session computes the same bits as before
    /// (`tests/lossless_bits.rs`). Only the session's own cells are copied (for the 1.5B with the
    /// default cache, ~22 KB a cached token), not its whole stream as llama.cpp's `seq_cp` would.
    fn close(&mut self, id: i32) {
        let Some(closed) = self.sessions.remove(&id) else { return };
        if let Err(e) = self.remove_from(closed.slot, 0) {
            tracing::warn!(id, error = %e, "could not free a closed session's KV cache");
            return;
        }
        let mut above: Vec<(i32, i32)> =
            self.sessions.iter().filter(|(_, st)| st.slot > closed.slot).map(|(&id, st)| (st.slot, id)).collect();
        above.sort_unstable();
        let mut free = closed.slot;
        for (slot, moved) in above {
            if let Err(e) = self.move_cache(slot, free) {
                // Left where they are, the sessions stay correct; only their shared calls split.
                tracing::warn!(id = moved, error = %e, "could not move a session's KV cache down");
                return;
            }
            if let Some(st) = self.sessions.get_mut(&moved) {
                st.slot = free;
            }
            self.usage.session_moves += 1;
            free = slot;
        }
    }

    /// Moves slot `from`'s cache into the empty slot `to` (on failure `from` is left as it was).
    fn move_cache(&mut self, from: i32, to: i32) -> Result<(), VerifierError> {
        let failed = |op, e: &dyn std::fmt::Display| VerifierError::Backend { op, reason: e.to_string() };
        let state = self.ctx.state_seq_get(from, LlamaStateSeqFlags::empty()).map_err(|e| failed("save a session's KV cache", &e))?;
        if let Err(e) = self.ctx.state_seq_set(&state, to) {
            let _ = self.remove_from(to, 0);
            return Err(failed("restore a session's KV cache", &e));
        }
        self.remove_from(from, 0)
    }

    fn state(&mut self, id: i32) -> Result<&mut SeqState, VerifierError> {
        self.sessions.get_mut(&id).ok_or_else(|| VerifierError::InvalidRequest(format!("session {id} is not open")))
    }

    /// The slot of an open session.
    fn slot(&mut self, id: i32) -> Result<i32, VerifierError> {
        self.state(id).map(|st| st.slot)
    }

    /// Removes the slot's cache entries at positions `from..`.
    fn remove_from(&mut self, slot: i32, from: usize) -> Result<(), VerifierError> {
        self.ctx
            .kv_cache_seq_rm(slot, Some(from as u32), None)
            .map_err(|e| VerifierError::Backend { op: "remove KV entries", reason: e.to_string() })
    }

    fn check_room(&self, what: &'static str, needed: usize) -> Result<(), VerifierError> {
        let limit = self.config.ctx_size as usize;
        if needed > limit { Err(VerifierError::ContextFull { what, needed, limit }) } else { Ok(()) }
    }

    fn check_tokens(&self, tokens: &[TokenId]) -> Result<(), VerifierError> {
        let n_vocab = self.model.vocab().n_tokens().max(0) as u32;
        match tokens.iter().position(|&t| t >= n_vocab) {
            Some(i) => Err(VerifierError::InvalidRequest(format!(
                "token {i} has id {}, the vocabulary has {n_vocab} tokens",
                tokens[i]
            ))),
            None => Ok(()),
        }
    }

    /// Decodes `tokens` at positions `start..` of `slot`; logits are requested for the last
    /// `logits_for` tokens, which must fit in one batch. Returns the greedy choice at each of them
    /// and, with features on, every token's hidden state.
    fn decode(
        &mut self,
        slot: i32,
        start: usize,
        tokens: &[TokenId],
        logits_for: usize,
    ) -> Result<(Vec<Choice>, Vec<f32>), VerifierError> {
        let batch_size = self.config.batch_size as usize;
        debug_assert!(logits_for <= batch_size && logits_for <= tokens.len());
        let first_logit = tokens.len() - logits_for;
        let mut choices = Vec::with_capacity(logits_for);
        let mut features = Vec::new();
        for (c, chunk) in tokens.chunks(batch_size).enumerate() {
            let mut batch = LlamaBatch::new(chunk.len(), 1);
            let base = c * batch_size;
            for (i, &t) in chunk.iter().enumerate() {
                let want = base + i >= first_logit;
                batch
                    .add(LlamaToken(t as i32), (start + base + i) as i32, &[slot], want)
                    .map_err(|e| VerifierError::Backend { op: "fill batch", reason: e.to_string() })?;
            }
            self.ctx.decode(&mut batch).map_err(|e| VerifierError::Backend { op: "decode", reason: e.to_string() })?;
            for i in 0..chunk.len() {
                if base + i >= first_logit {
                    choices.push(choose(self.ctx.get_logits_ith(i as i32)));
                }
                if self.config.features {
                    features.extend_from_slice(self.hidden_state(i)?);
                }
            }
        }
        Ok((choices, features))
    }

    /// The final hidden state of row `row` of the last decode (with features on).
    fn hidden_state(&self, row: usize) -> Result<&[f32], VerifierError> {
        self.ctx.embeddings_ith(row as i32).map_err(|_| VerifierError::Backend {
            op: "read hidden states",
            reason: format!("no hidden state for batch row {row}"),
        })
    }

    fn feed(&mut self, id: i32, tokens: &[TokenId], sampling: &SamplingParams) -> Result<Verdict, VerifierError> {
        if tokens.is_empty() {
            return Err(VerifierError::InvalidRequest("`tokens` must not be empty".into()));
        }
        self.check_room("the prompt", tokens.len())?;
        self.check_tokens(tokens)?;
        let slot = self.slot(id)?;
        let cached = &self.state(id)?.tokens;
        // Keep the longest cached prefix, but always evaluate at least the last token: its logits
        // give the next choice.
        let keep = cached.iter().zip(tokens).take_while(|(a, b)| a == b).count().min(tokens.len() - 1);
        self.remove_from(slot, keep)?;
        let st = self.state(id)?;
        st.tokens.truncate(keep);
        st.pending = None;
        let (mut choice, features) = match self.decode(slot, keep, &tokens[keep..], 1) {
            Ok((c, f)) => (c[0], f),
            Err(e) => {
                // Leave the session consistent: nothing past `keep` is trusted.
                let _ = self.remove_from(slot, keep);
                return Err(e);
            }
        };
        let mut next_dist = Vec::new();
        if !sampling.is_greedy() {
            // The last evaluated token is the last row of the last chunk.
            let row = (tokens.len() - keep - 1) % self.config.batch_size as usize;
            let p = process(self.ctx.get_logits_ith(row as i32), sampling);
            choice = sampled_choice(&p, sample(&p, sampling.seed, tokens.len()), choice.margin);
            next_dist = reportable(p, sampling);
        }
        let st = self.state(id)?;
        st.tokens = tokens.to_vec();
        st.pending = Some(choice.token);
        Ok(Verdict { accepted: 0, next: choice, choices: vec![choice], features, next_dist, batch: BatchShare::default() })
    }

    /// Evaluates `tokens` from an empty cache with the greedy choice at every position (teacher
    /// forcing), then leaves the session empty again.
    fn score(&mut self, id: i32, tokens: &[TokenId]) -> Result<(Vec<Choice>, Vec<f32>), VerifierError> {
        if tokens.is_empty() || tokens.len() > self.config.batch_size as usize {
            return Err(VerifierError::InvalidRequest(format!(
                "`tokens` to score must number 1 to {} (the batch size), got {}",
                self.config.batch_size,
                tokens.len()
            )));
        }
        self.check_tokens(tokens)?;
        self.check_room("the scored sequence", tokens.len())?;
        let slot = self.slot(id)?;
        self.remove_from(slot, 0)?;
        let result = self.decode(slot, 0, tokens, tokens.len());
        self.remove_from(slot, 0)?;
        let st = self.state(id)?;
        st.tokens.clear();
        st.pending = None;
        result
    }

    /// Times verification of blocks of `sizes` draft tokens on top of the session's current context
    /// (best of `repeats`, seconds) and leaves the session as it was. The drafts are copies of the
    /// pending token: the cost of a decode does not depend on which tokens it evaluates.
    fn measure(&mut self, id: i32, sizes: &[usize], repeats: usize) -> Result<Vec<f64>, VerifierError> {
        let (len, pending) = self.pending(id)?;
        let slot = self.slot(id)?;
        let largest = sizes.iter().copied().max().unwrap_or(0);
        if largest + 1 > self.config.batch_size as usize {
            return Err(VerifierError::InvalidRequest(format!(
                "a measured block may hold at most {} tokens, got {largest}",
                self.config.batch_size - 1
            )));
        }
        self.check_room("the measured block", len + 1 + largest)?;
        let mut best = vec![f64::INFINITY; sizes.len()];
        // One untimed decode first: the first call after a pause pays for waking threads and caches.
        let warm_up = self.decode(slot, len, &[pending], 1);
        self.remove_from(slot, len)?;
        warm_up?;
        for _ in 0..repeats.max(1) {
            for (j, &k) in sizes.iter().enumerate() {
                let block = vec![pending; k + 1];
                let t = Instant::now();
                let result = self.decode(slot, len, &block, block.len());
                let elapsed = t.elapsed().as_secs_f64();
                self.remove_from(slot, len)?;
                result?;
                best[j] = best[j].min(elapsed);
            }
        }
        Ok(best)
    }
}

/// The choice record of a sampled token: its probability under p, the greedy margin of the row.
fn sampled_choice(p: &[(TokenId, f32)], token: TokenId, margin: f32) -> Choice {
    Choice { token, prob: crate::sampling::prob_of(p, token), margin }
}

/// `p` when it is small enough to report (top-k sampling within [`REPORTED_SUPPORT_LIMIT`]).
fn reportable(p: SparseDist, sampling: &SamplingParams) -> SparseDist {
    if (1..=REPORTED_SUPPORT_LIMIT).contains(&sampling.top_k) { p } else { Vec::new() }
}
