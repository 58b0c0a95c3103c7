//! The generation threads: each runs one generation at a time, start to end, on the engine's
//! synchronous loop (models block; they never run on async workers).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duet_verifier::TokenId;
use tokio::sync::mpsc::UnboundedSender;

use crate::drafters::DrafterKind;
use crate::engine::{self, DraftPolicy, Drafter, EngineError, GenerateParams, MAX_TOKENS_LIMIT, Mode, PolicyMemory, Stats, StopReason};
use crate::text::Utf8Stream;

use super::metrics as m;
use super::stop::{Released, StopMatcher};
use super::timed::{TimedDrafter, TimedSession};
use super::{Backend, Event, FinishReason, Finished, GenerationRequest, Prompt, ServiceError, Usage};

/// An admitted request waiting for a generation thread.
pub(crate) struct Job {
    pub request: GenerationRequest,
    pub mode: Mode,
    pub drafter: DrafterKind,
    pub block_size: usize,
    pub draft_policy: DraftPolicy,
    pub policy_memory: Option<Arc<PolicyMemory>>,
    pub events: UnboundedSender<Event>,
    pub admitted: Instant,
    /// Longest the generation may take from admission.
    pub timeout: Option<Duration>,
    pub slot: Slot,
}

/// Generations admitted (running or queued), against the limits.
#[derive(Debug)]
pub(crate) struct Load {
    pub running: AtomicUsize,
    pub queued: AtomicUsize,
    pub max_running: usize,
    pub max_queued: usize,
    /// Generations cut short because their caller went away, since the start.
    pub cancelled: std::sync::atomic::AtomicU64,
}

impl Load {
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        Self { running: AtomicUsize::new(0), queued: AtomicUsize::new(0), max_running, max_queued, cancelled: Default::default() }
    }

    /// Takes a place in the queue, or refuses when every session is busy and the queue is full.
    pub fn admit(self: &Arc<Self>) -> Result<Slot, ServiceError> {
        let limit = self.max_running + self.max_queued;
        // A starting generation raises `running` before it lowers `queued`, so the sum may briefly
        // overcount by one, never undercount.
        let mut queued = self.queued.load(Ordering::SeqCst);
        loop {
            let running = self.running.load(Ordering::SeqCst);
            if running + queued >= limit {
                return Err(ServiceError::Busy {
                    running,
                    queued,
                    max_running: self.max_running,
                    max_queued: self.max_queued,
                });
            }
            match self.queued.compare_exchange(queued, queued + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => queued = now,
            }
        }
        self.publish();
        Ok(Slot { load: self.clone(), running: false })
    }

    fn publish(&self) {
        metrics::gauge!(m::SESSIONS_IN_FLIGHT).set(self.running.load(Ordering::SeqCst) as f64);
        metrics::gauge!(m::QUEUED_REQUESTS).set(self.queued.load(Ordering::SeqCst) as f64);
    }
}

/// A generation's place: queued, then running; freed on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    load: Arc<Load>,
    running: bool,
}

impl Slot {
    fn start(&mut self) {
        self.load.running.fetch_add(1, Ordering::SeqCst);
        self.load.queued.fetch_sub(1, Ordering::SeqCst);
        self.running = true;
        self.load.publish();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counter = if self.running { &self.load.running } else { &self.load.queued };
        counter.fetch_sub(1, Ordering::SeqCst);
        self.load.publish();
    }
}

/// Thread body: takes jobs until the service is dropped.
pub(crate) fn serve(backend: Arc<dyn Backend>, jobs: Arc<Mutex<Receiver<Job>>>, load: Arc<Load>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(mut job) = job else { return };
        job.slot.start();
        let events = job.events.clone();
        let outcome = catch_unwind(AssertUnwindSafe(|| run(backend.as_ref(), &job)));
        let label = match outcome {
            Ok(Ok(Some(finished))) => {
                let label = reason_label(finished.reason);
                let _ = events.send(Event::Finished(Box::new(finished)));
                label
            }
            Ok(Ok(None)) => {
                load.cancelled.fetch_add(1, Ordering::SeqCst);
                "cancelled"
            }
            Ok(Err(e)) => {
                let label = if matches!(e, ServiceError::Timeout { .. }) { "timeout" } else { "error" };
                let _ = events.send(Event::Error(e));
                label
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "a generation panicked");
                let _ = events.send(Event::Error(ServiceError::Internal(format!("the generation failed: {what}"))));
                "error"
            }
        };
        metrics::counter!(m::GENERATIONS, "outcome" => label).increment(1);
        // The session was dropped inside `run` (its KV cache freed) before the slot frees here.
        drop(job);
    }
}

fn reason_label(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos => "eos",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::MaxTokens => "max_tokens",
        FinishReason::ContextFull => "context_full",
    }
}

/// The label of a drafter in metrics.
pub(crate) fn drafter_label(kind: DrafterKind) -> &'static str {
    match kind {
        DrafterKind::Diffusion => "diffusion",
        DrafterKind::Ngram => "ngram",
        DrafterKind::ArModel => "ar-model",
    }
}

/// Runs one generation; `Ok(None)` when the caller went away.
fn run(backend: &dyn Backend, job: &Job) -> Result<Option<Finished>, ServiceError> {
    if job.events.is_closed() {
        return Ok(None);
    }
    if let Some(limit) = job.timeout
        && job.admitted.elapsed() >= limit
    {
        // It waited in the queue for all of its time.
        return Err(ServiceError::Timeout { limit });
    }
    let text = match &job.request.prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(messages) => backend.chat_prompt(messages)?,
        Prompt::Infill { prefix, suffix } => backend.infill_prompt(prefix, suffix)?,
    };
    let prompt = backend.tokenize(&text)?;
    if prompt.is_empty() {
        return Err(ServiceError::Invalid("the prompt is empty after tokenization".into()));
    }
    let ctx = backend.ctx_size();
    if prompt.len() >= ctx {
        return Err(ServiceError::ContextLength(format!(
            "the prompt has {} tokens but the context holds {ctx} (prompt plus at least one generated token); \
             shorten the prompt",
            prompt.len()
        )));
    }
    let max_tokens = job.request.max_tokens.unwrap_or(ctx - prompt.len()).min(MAX_TOKENS_LIMIT);
    let params = GenerateParams {
        max_tokens,
        mode: job.mode,
        block_size: job.block_size,
        sampling: job.request.sampling.params(fresh_seed()),
        draft_policy: job.draft_policy.clone(),
        policy_memory: job.policy_memory.clone(),
    };
    let drafter_kind = if job.mode == Mode::Diffusion { DrafterKind::Diffusion } else { job.drafter };
    let mut drafter: Option<Box<dyn Drafter>> = match job.mode {
        Mode::Ar => None,
        Mode::Hybrid | Mode::Diffusion => Some(backend.new_drafter(drafter_kind)?),
    };
    let mut session = match job.mode {
        Mode::Diffusion => None,
        Mode::Ar | Mode::Hybrid => Some(backend.open_session()?),
    };
    if job.events.send(Event::Started { prompt_tokens: prompt.len() }).is_err() {
        return Ok(None);
    }

    let label = drafter_label(drafter_kind);
    let mut out = Output::new(backend, &job.request.stop, &job.events, job.admitted);
    out.deadline = job.timeout.map(|t| job.admitted + t);
    let is_eog = |t: TokenId| backend.is_eog(t);
    let started = Instant::now();
    let (result, counted) = {
        let mut on_tokens = |toks: &[TokenId]| out.push(toks);
        let mut timed_drafter = drafter.as_mut().map(|d| TimedDrafter { inner: d.as_mut(), name: label });
        match session.as_mut() {
            None => {
                let d = timed_drafter.as_mut().ok_or_else(|| ServiceError::Internal("no drafter".into()))?;
                (engine::generate_unverified(d, &prompt, &params, ctx, &is_eog, &mut on_tokens), None)
            }
            Some(s) => {
                let mut timed = TimedSession::new(s.as_mut(), label, job.mode == Mode::Hybrid);
                let r = engine::generate(
                    &mut timed,
                    timed_drafter.as_mut().map(|d| d as &mut dyn Drafter),
                    &prompt,
                    &params,
                    &is_eog,
                    &mut on_tokens,
                );
                (r, Some((timed.rounds, timed.drafted, timed.accepted, timed.verifier_s)))
            }
        }
    };
    // Free the KV cache before the caller hears the end.
    drop(session);

    let (reason, stats) = match result {
        Ok(generation) => {
            let tail = out.finish();
            if !tail.is_empty() && job.events.send(Event::Delta { text: tail, tokens: Vec::new() }).is_err() {
                return Ok(None);
            }
            let reason = if out.stopped {
                FinishReason::StopSequence
            } else {
                match generation.stop {
                    StopReason::Eos => FinishReason::Eos,
                    // Without a limit of its own, the request was limited by the context.
                    StopReason::MaxTokens if job.request.max_tokens.is_none() && max_tokens == ctx - prompt.len() => {
                        FinishReason::ContextFull
                    }
                    StopReason::MaxTokens => FinishReason::MaxTokens,
                    StopReason::ContextFull => FinishReason::ContextFull,
                }
            };
            if let Some(scale) = generation.stats.cost_scale {
                metrics::gauge!(m::COST_SCALE, "drafter" => label).set(scale);
            }
            (reason, generation.stats)
        }
        Err(EngineError::Cancelled) if out.stopped => {
            // A stop string ended the output: the engine's own statistics never came back.
            let (rounds, drafted, accepted, verifier_s) = counted.unwrap_or_default();
            let mut stats = Stats {
                prompt_tokens: prompt.len(),
                rounds,
                drafted,
                accepted,
                verifier_s,
                ttft_s: out.first_token_s.unwrap_or_default(),
                ..Stats::default()
            };
            stats.finish(started.elapsed().as_secs_f64(), out.tokens);
            (FinishReason::StopSequence, stats)
        }
        Err(EngineError::Cancelled) if out.timed_out => {
            return Err(ServiceError::Timeout { limit: job.timeout.unwrap_or_default() });
        }
        Err(EngineError::Cancelled) => return Ok(None),
        Err(EngineError::Invalid(msg)) => return Err(ServiceError::Invalid(msg)),
        Err(EngineError::Verifier(
            e @ (duet_verifier::VerifierError::Unavailable(_) | duet_verifier::VerifierError::WorkerGone),
        )) => {
            return Err(ServiceError::Unavailable(format!("{e}; retry later")));
        }
        // A request the verifier refuses (e.g. sampling on a remote verifier that only decodes greedily).
        Err(EngineError::Verifier(duet_verifier::VerifierError::InvalidRequest(msg))) if out.tokens == 0 => {
            return Err(ServiceError::Invalid(msg));
        }
        Err(EngineError::Verifier(e)) => return Err(ServiceError::Internal(format!("the verifier failed: {e}"))),
    };
    let usage = Usage {
        prompt_tokens: prompt.len(),
        completion_tokens: out.tokens,
        drafted_tokens: stats.drafted,
        accepted_tokens: stats.accepted,
    };
    Ok(Some(Finished { reason, usage, stats }))
}

/// A seed for a request that sent none: differs between requests, like OpenAI's unseeded sampling.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// Turns accepted tokens into released text: UTF-8 completion, stop strings, latency metrics.
struct Output<'a> {
    backend: &'a dyn Backend,
    events: &'a UnboundedSender<Event>,
    utf8: Utf8Stream,
    stop: StopMatcher,
    /// Tokens counted as output (up to the one that completed a stop string).
    tokens: usize,
    stopped: bool,
    admitted: Instant,
    last: Option<Instant>,
    first_token_s: Option<f64>,
    /// When the generation must stop, and whether it did for that.
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<'a> Output<'a> {
    fn new(backend: &'a dyn Backend, stops: &[String], events: &'a UnboundedSender<Event>, admitted: Instant) -> Self {
        Self {
            backend,
            events,
            utf8: Utf8Stream::default(),
            stop: StopMatcher::new(stops),
            tokens: 0,
            stopped: false,
            admitted,
            last: None,
            first_token_s: None,
            deadline: None,
            timed_out: false,
        }
    }

    /// Takes a batch of accepted tokens; `false` ends the generation (stop string, or nobody listens).
    fn push(&mut self, toks: &[TokenId]) -> bool {
        let now = Instant::now();
        match self.last {
            None => {
                let ttft = now.duration_since(self.admitted).as_secs_f64();
                self.first_token_s = Some(ttft);
                metrics::histogram!(m::TIME_TO_FIRST_TOKEN).record(ttft);
            }
            Some(last) => {
                let gap = now.duration_since(last).as_secs_f64() / toks.len().max(1) as f64;
                let h = metrics::histogram!(m::INTER_TOKEN_LATENCY);
                for _ in toks {
                    h.record(gap);
                }
            }
        }
        self.last = Some(now);

        let mut text = String::new();
        let mut used = 0;
        for &t in toks {
            used += 1;
            let piece = self.utf8.push(&self.backend.detokenize(&[t]));
            match self.stop.push(&piece) {
                Released::More(s) => text.push_str(&s),
                Released::Stopped(s) => {
                    text.push_str(&s);
                    self.stopped = true;
                    break;
                }
            }
        }
        self.tokens += used;
        metrics::counter!(m::GENERATED_TOKENS).increment(used as u64);
        let listening = self.events.send(Event::Delta { text, tokens: toks[..used].to_vec() }).is_ok();
        self.timed_out = !self.stopped && self.deadline.is_some_and(|d| now >= d);
        listening && !self.stopped && !self.timed_out
    }

    /// The text still held once the engine has finished.
    fn finish(&mut self) -> String {
        let rest = self.utf8.finish();
        match self.stop.push(&rest) {
            Released::Stopped(s) => {
                self.stopped = true;
                s
            }
            Released::More(mut s) => {
                s.push_str(&self.stop.finish());
                s
            }
        }
    }
}
