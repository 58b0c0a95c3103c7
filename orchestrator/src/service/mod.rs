//! The generation service: the one place where requests meet the loaded models, shared by every
//! transport (the OpenAI-compatible HTTP server, the gRPC orchestrator). Transport-neutral: plain
//! Rust requests in, a stream of [`Event`]s out.
//!
//! - Each generation runs start to end on one of `max_running` dedicated threads (the engine loop is
//!   synchronous and the models block), never on an async worker.
//! - Admission is bounded: at most `max_running` generations hold a session and `max_queued` wait;
//!   beyond that [`GenerationService::submit`] answers [`ServiceError::Busy`] at once (HTTP 429,
//!   gRPC RESOURCE_EXHAUSTED).
//! - Dropping the [`GenerationStream`] cancels the generation at its next accepted batch: the engine
//!   stops, the verifier session closes and its KV cache is freed.
//! - Stop strings are matched on the text, also across tokens; the output ends right before them.
//! - Mode, drafter and block size can be chosen per request; defaults come from [`ServiceConfig`].

mod backend;
mod error;
mod event;
pub mod metrics;
mod request;
mod stop;
pub mod testing;
mod timed;
mod worker;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use duet_verifier::TokenId;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

pub use backend::{Backend, DiffusionSetup, FIM_MARKERS, Models, fim_prompt};
pub use error::{RETRY_AFTER_S, ServiceError};
pub use event::{Event, FinishReason, Finished, Usage};
pub use request::{GenerationRequest, MAX_PROMPT_BYTES, MAX_STOP_LEN, MAX_STOP_STRINGS, Prompt, Sampling};
pub use stop::{Released, StopMatcher};

use crate::drafters::DrafterKind;
use crate::engine::{DraftPolicy, MAX_BLOCK_SIZE, Mode, PolicyMemory};
use worker::{Job, Load};

/// Limits and per-request defaults of a service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Generations that run at once (each holds a verifier session; the verifier must allow as many).
    pub max_running: usize,
    /// Generations that may wait for a session before requests are refused as busy.
    pub max_queued: usize,
    /// Mode of requests that do not choose one.
    pub mode: Mode,
    /// Drafter of hybrid requests that do not choose one.
    pub drafter: DrafterKind,
    /// Block size of requests that do not choose one.
    pub block_size: usize,
    /// Longest a generation may take from admission (queueing included) before it is stopped with
    /// [`ServiceError::Timeout`]; `None` for no limit. A request may ask for less
    /// ([`GenerationRequest::timeout`]), never more.
    pub request_timeout: Option<Duration>,
    /// How hybrid generations choose their draft length (`duet serve` measures a cost curve at
    /// start-up and drafts cost-aware; [`DraftPolicy::Fixed`] sends every proposed draft).
    pub draft_policy: DraftPolicy,
}

/// Default of [`ServiceConfig::request_timeout`]: ten minutes, longer than any generation of the
/// context's length takes on a small CPU, short enough that a stuck one is freed.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_running: duet_verifier::config::DEFAULT_MAX_SESSIONS as usize,
            max_queued: 32,
            mode: Mode::Hybrid,
            drafter: DrafterKind::Ngram,
            block_size: 8,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            draft_policy: DraftPolicy::Fixed,
        }
    }
}

/// Generations running and waiting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSnapshot {
    /// Generations holding a session.
    pub running: usize,
    /// Generations waiting for one.
    pub queued: usize,
}

/// A handle to the generation threads. Cheap to clone; the threads stop when the last handle is
/// dropped and their queue is empty.
#[derive(Clone)]
pub struct GenerationService {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    config: ServiceConfig,
    load: Arc<Load>,
    jobs: Sender<Job>,
    /// Per drafter, what the cost-aware policy learnt in earlier generations.
    policy_memories: Mutex<HashMap<DrafterKind, Arc<PolicyMemory>>>,
}

impl std::fmt::Debug for GenerationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationService")
            .field("model", &self.inner.backend.model_name())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl GenerationService {
    /// Starts `config.max_running` generation threads over `backend`.
    pub fn start(backend: Arc<dyn Backend>, config: ServiceConfig) -> Result<Self, ServiceError> {
        if config.max_running == 0 {
            return Err(ServiceError::Invalid("the service needs at least one generation thread".into()));
        }
        if !(1..=MAX_BLOCK_SIZE).contains(&config.block_size) {
            return Err(ServiceError::Invalid(format!(
                "the default block size must be between 1 and {MAX_BLOCK_SIZE}, got {}",
                config.block_size
            )));
        }
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let load = Arc::new(Load::new(config.max_running, config.max_queued));
        for i in 0..config.max_running {
            let (backend, rx, load) = (backend.clone(), rx.clone(), load.clone());
            std::thread::Builder::new()
                .name(format!("duet-gen-{i}"))
                .stack_size(8 << 20)
                .spawn(move || worker::serve(backend, rx, load))
                .map_err(|e| ServiceError::Internal(format!("cannot start a generation thread: {e}")))?;
        }
        let policy_memories = Mutex::new(HashMap::new());
        Ok(Self { inner: Arc::new(Inner { backend, config, load, jobs: tx, policy_memories }) })
    }

    /// Checks a request, admits it (or answers [`ServiceError::Busy`]) and returns its events.
    /// Never blocks: safe to call from async code. Errors found once the prompt is tokenized (too
    /// long for the context, no chat template) arrive as the stream's first event.
    pub fn submit(&self, request: GenerationRequest) -> Result<GenerationStream, ServiceError> {
        request.validate()?;
        let cfg = &self.inner.config;
        let mode = request.mode.unwrap_or(cfg.mode);
        let drafter = match mode {
            Mode::Diffusion => DrafterKind::Diffusion,
            _ => request.drafter.unwrap_or(cfg.drafter),
        };
        self.inner.backend.check(mode, drafter)?;
        let block_size = request.block_size.unwrap_or(cfg.block_size);
        let timeout = match (request.timeout, cfg.request_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let slot = self.inner.load.admit()?;
        let (tx, rx) = unbounded_channel();
        let draft_policy = if mode == Mode::Hybrid { cfg.draft_policy.clone() } else { DraftPolicy::Fixed };
        let policy_memory = (mode == Mode::Hybrid).then(|| self.policy_memory(drafter));
        let job = Job {
            request,
            mode,
            drafter,
            block_size,
            draft_policy,
            policy_memory,
            events: tx,
            admitted: Instant::now(),
            timeout,
            slot,
        };
        self.inner
            .jobs
            .send(job)
            .map_err(|_| ServiceError::Unavailable("the generation threads have stopped".into()))?;
        Ok(GenerationStream { rx })
    }

    /// What the cost-aware policy learnt so far about `drafter`, shared by its generations.
    fn policy_memory(&self, drafter: DrafterKind) -> Arc<PolicyMemory> {
        let mut memories = self.inner.policy_memories.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        memories.entry(drafter).or_default().clone()
    }

    /// Whether the models can serve now (a remote verifier may be down); for health checks.
    pub fn available(&self) -> Result<(), String> {
        self.inner.backend.available()
    }

    /// The name clients use for the model.
    pub fn model_name(&self) -> &str {
        self.inner.backend.model_name()
    }

    /// Context length of one session.
    pub fn ctx_size(&self) -> usize {
        self.inner.backend.ctx_size()
    }

    /// Limits and defaults.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// What the local verifier holds now, also published as metrics; `None` when the verifier runs
    /// in another process. Blocks while the verifier thread finishes its current decode: call it
    /// from a blocking task.
    pub fn verifier_usage(&self) -> Option<duet_verifier::Usage> {
        let usage = self.inner.backend.verifier_usage()?;
        metrics::record_verifier_usage(&usage);
        Some(usage)
    }

    /// Generations cut short because their caller went away (disconnect, dropped stream), so far.
    pub fn cancelled(&self) -> u64 {
        self.inner.load.cancelled.load(Ordering::SeqCst)
    }

    /// Generations running and queued now.
    pub fn load(&self) -> LoadSnapshot {
        LoadSnapshot {
            running: self.inner.load.running.load(Ordering::SeqCst),
            queued: self.inner.load.queued.load(Ordering::SeqCst),
        }
    }
}

/// The events of one generation. Dropping it cancels the generation.
#[derive(Debug)]
pub struct GenerationStream {
    rx: UnboundedReceiver<Event>,
}

/// A whole generation, collected.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The output text (cut before a stop string).
    pub text: String,
    /// The output tokens.
    pub tokens: Vec<TokenId>,
    /// How it ended.
    pub finished: Finished,
}

impl GenerationStream {
    /// The next event; `None` after `Finished` or `Error`.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread (for callers outside async code).
    pub fn blocking_next_event(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Waits for the whole generation.
    pub async fn collect(mut self) -> Result<Completion, ServiceError> {
        let (mut text, mut tokens) = (String::new(), Vec::new());
        while let Some(event) = self.next_event().await {
            match event {
                Event::Started { .. } => {}
                Event::Delta { text: t, tokens: k } => {
                    text.push_str(&t);
                    tokens.extend_from_slice(&k);
                }
                Event::Finished(finished) => return Ok(Completion { text, tokens, finished: *finished }),
                Event::Error(e) => return Err(e),
            }
        }
        Err(ServiceError::Internal("the generation ended without a result".into()))
    }
}

impl futures_core::Stream for GenerationStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests;
