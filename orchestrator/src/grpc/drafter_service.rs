//! The `duet.v1.Drafter` service (`duet drafter serve`).
//!
//! Drafting is CPU work that must not run on tokio's workers, and a session's state (the diffusion
//! drafter's context cache) must stay with it between calls. So one dedicated thread owns every
//! session and serves jobs from a bounded queue, each with its own reply channel; when the queue is
//! full a call answers RESOURCE_EXHAUSTED at once. The thread first loads the models (health stays
//! NOT_SERVING until then). Each session keeps the context tokens and verifier features it has been
//! sent, so a call carries only what is new; sessions end by `CloseSession` or after an idle timeout.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use duet_proto::v1 as pb;
use duet_proto::v1::drafter_server::{Drafter as DrafterRpc, DrafterServer};
use duet_verifier::TokenId;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::convert::{check_previous, check_session_id, check_tokens, invalid, previous_from_pb};
use super::server::MAX_MESSAGE_BYTES;
use crate::drafters::DiffusionDrafter;
use crate::engine::{DraftError, DraftRequest, Drafter, Features, MAX_BLOCK_SIZE};

/// Most context tokens a drafter session holds: a client cannot grow a session's memory without
/// bound by sending more and more tokens. Above any verifier's context (Qwen2.5 goes to 131,072).
pub const MAX_CONTEXT_TOKENS: usize = 1 << 17;

/// Limits of a drafter server.
#[derive(Debug, Clone)]
pub struct DrafterServiceConfig {
    /// Most sessions held at once; a new session beyond them gets RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Draft calls waiting for the drafter thread; one more gets RESOURCE_EXHAUSTED.
    pub queue_depth: usize,
    /// A session unused this long is freed.
    pub idle_timeout: Duration,
}

impl Default for DrafterServiceConfig {
    fn default() -> Self {
        Self { max_sessions: 64, queue_depth: 32, idle_timeout: Duration::from_secs(300) }
    }
}

/// A session's drafter. The diffusion drafter is kept as itself so its confidences reach the wire.
pub enum SessionDrafter {
    /// Any engine drafter (n-gram, AR model, test drafters).
    Engine(Box<dyn Drafter>),
    /// The block-diffusion drafter.
    Diffusion(Box<DiffusionDrafter>),
}

/// What the service drafts with, built on the drafter thread once the models are loaded.
pub trait DrafterFactory: Send {
    /// Every drafter a request may name, with what it needs.
    fn drafters(&self) -> Vec<pb::DrafterDescription>;
    /// The drafter of requests that name none.
    fn default_drafter(&self) -> String;
    /// A new session's drafter (`name` is one of [`drafters`](Self::drafters)).
    fn open(&self, name: &str) -> Result<SessionDrafter, DraftError>;
}

/// Loads the models on the drafter thread and returns the factory, or why it failed.
pub type LoadDrafters = Box<dyn FnOnce() -> Result<Box<dyn DrafterFactory>, String> + Send>;

enum Job {
    Draft { req: pb::DraftRequest, reply: oneshot::Sender<Result<pb::DraftResponse, Status>> },
    /// Wakes the thread to process the close list.
    Wake,
}

/// The `duet.v1.Drafter` implementation: checks requests and hands them to the drafter thread.
#[derive(Clone)]
pub struct DrafterService {
    jobs: SyncSender<Job>,
    /// Sessions to close, processed by the thread before its next job (never refused, unlike jobs).
    closing: Arc<Mutex<Vec<String>>>,
    info: Arc<OnceLock<pb::DrafterInfoResponse>>,
}

impl std::fmt::Debug for DrafterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrafterService").field("loaded", &self.info.get().is_some()).finish()
    }
}

impl DrafterService {
    /// Starts the drafter thread, which runs `load` first. `ready` receives the load's outcome.
    pub fn start(
        load: LoadDrafters,
        config: DrafterServiceConfig,
        ready: oneshot::Sender<Result<(), String>>,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = sync_channel(config.queue_depth.max(1));
        let closing = Arc::new(Mutex::new(Vec::new()));
        let info = Arc::new(OnceLock::new());
        let (thread_closing, thread_info) = (closing.clone(), info.clone());
        std::thread::Builder::new().name("duet-drafter".into()).spawn(move || {
            let factory = match load() {
                Ok(f) => f,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let described = pb::DrafterInfoResponse {
                drafters: factory.drafters(),
                default_drafter: factory.default_drafter(),
                max_sessions: config.max_sessions as u32,
            };
            let _ = thread_info.set(described.clone());
            let _ = ready.send(Ok(()));
            Worker { factory, info: described, config, sessions: HashMap::new(), closing: thread_closing }.run(rx);
        })?;
        Ok(Self { jobs, closing, info })
    }

    /// The tonic server for this service, with Duet's message size limits.
    pub fn into_server(self) -> DrafterServer<Self> {
        DrafterServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn info(&self) -> Result<&pb::DrafterInfoResponse, Status> {
        self.info.get().ok_or_else(|| Status::unavailable("the drafter is still loading its models"))
    }
}

#[tonic::async_trait]
impl DrafterRpc for DrafterService {
    async fn info(&self, _: Request<pb::DrafterInfoRequest>) -> Result<Response<pb::DrafterInfoResponse>, Status> {
        Ok(Response::new(self.info()?.clone()))
    }

    async fn draft(&self, request: Request<pb::DraftRequest>) -> Result<Response<pb::DraftResponse>, Status> {
        let info = self.info()?;
        let req = request.into_inner();
        check_session_id(&req.session_id)?;
        if !(1..=MAX_BLOCK_SIZE as u32).contains(&req.max_len) {
            return Err(invalid("max_len", format!("must be between 1 and {MAX_BLOCK_SIZE}, got {}", req.max_len)));
        }
        if !req.drafter.is_empty() && !info.drafters.iter().any(|d| d.name == req.drafter) {
            let names: Vec<&str> = info.drafters.iter().map(|d| d.name.as_str()).collect();
            return Err(invalid("drafter", format!("must be one of {names:?}, got {:?}", req.drafter)));
        }
        if let Some(f) = &req.features
            && (f.dim == 0 || !f.data.len().is_multiple_of(f.dim as usize))
        {
            return Err(invalid(
                "features",
                format!("must hold whole rows of `dim` floats, got {} floats of dim {}", f.data.len(), f.dim),
            ));
        }
        if let Some(p) = &req.previous {
            check_previous(p)?;
        }
        if req.new_tokens.len() > MAX_CONTEXT_TOKENS {
            return Err(invalid(
                "new_tokens",
                format!("must hold at most {MAX_CONTEXT_TOKENS} tokens, got {}", req.new_tokens.len()),
            ));
        }
        let (reply, rx) = oneshot::channel();
        self.jobs.try_send(Job::Draft { req, reply }).map_err(|e| match e {
            TrySendError::Full(_) => Status::resource_exhausted("the drafter's queue is full; retry later"),
            TrySendError::Disconnected(_) => Status::unavailable("the drafter thread has stopped"),
        })?;
        let res = rx.await.map_err(|_| Status::internal("the drafter thread dropped the request"))?;
        res.map(Response::new)
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseDraftSessionRequest>,
    ) -> Result<Response<pb::CloseDraftSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        check_session_id(&id)?;
        self.closing.lock().map_err(|_| Status::internal("close list poisoned"))?.push(id);
        // A full queue means the thread is busy and will see the close list before its next job.
        let _ = self.jobs.try_send(Job::Wake);
        Ok(Response::new(pb::CloseDraftSessionResponse {}))
    }
}

/// One session: its drafter and the context (and features) it has been sent.
struct Session {
    name: String,
    drafter: SessionDrafter,
    context: Vec<TokenId>,
    /// Row-major hidden states of the first `features.len() / feature_dim` context tokens.
    features: Vec<f32>,
    feature_dim: usize,
    n_vocab: usize,
    last_used: Instant,
}

struct Worker {
    factory: Box<dyn DrafterFactory>,
    info: pb::DrafterInfoResponse,
    config: DrafterServiceConfig,
    sessions: HashMap<String, Session>,
    closing: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        let tick = (self.config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        loop {
            let job = rx.recv_timeout(tick);
            self.close_requested();
            self.reap_idle();
            match job {
                Ok(Job::Draft { req, reply }) => {
                    // The caller went away (cancelled or past its deadline): skip the work.
                    if reply.is_closed() {
                        continue;
                    }
                    let res = self.draft(req);
                    if let Err(s) = &res {
                        tracing::debug!(status = %s, "draft refused");
                    }
                    let _ = reply.send(res);
                }
                Ok(Job::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn close_requested(&mut self) {
        let ids = match self.closing.lock() {
            Ok(mut l) => std::mem::take(&mut *l),
            Err(_) => return,
        };
        for id in ids {
            self.sessions.remove(&id);
        }
    }

    fn reap_idle(&mut self) {
        let timeout = self.config.idle_timeout;
        self.sessions.retain(|id, s| {
            let keep = s.last_used.elapsed() < timeout;
            if !keep {
                tracing::info!(session = %id, "freeing an idle drafter session");
            }
            keep
        });
    }

    fn open(&mut self, id: &str, requested: &str) -> Result<(), Status> {
        if self.sessions.len() >= self.config.max_sessions {
            return Err(Status::resource_exhausted(format!(
                "all {} drafter sessions are in use",
                self.config.max_sessions
            )));
        }
        let name = if requested.is_empty() { self.info.default_drafter.clone() } else { requested.to_owned() };
        let desc = self.info.drafters.iter().find(|d| d.name == name).cloned().unwrap_or_default();
        let drafter = self.factory.open(&name).map_err(|e| Status::internal(e.to_string()))?;
        self.sessions.insert(
            id.to_owned(),
            Session {
                name,
                drafter,
                context: Vec::new(),
                features: Vec::new(),
                feature_dim: desc.feature_dim as usize,
                n_vocab: desc.verifier_vocab_size as usize,
                last_used: Instant::now(),
            },
        );
        Ok(())
    }

    fn draft(&mut self, req: pb::DraftRequest) -> Result<pb::DraftResponse, Status> {
        if !self.sessions.contains_key(&req.session_id) {
            self.open(&req.session_id, &req.drafter)?;
        }
        let Some(s) = self.sessions.get_mut(&req.session_id) else {
            return Err(Status::internal("the session vanished"));
        };
        s.last_used = Instant::now();
        if !req.drafter.is_empty() && req.drafter != s.name {
            return Err(invalid("drafter", format!("is {:?} for this session (fixed by its first call), got {:?}", s.name, req.drafter)));
        }
        let keep = req.keep_len as usize;
        if keep > s.context.len() {
            return Err(Status::failed_precondition(format!(
                "`keep_len` is {keep} but session {} holds {} context tokens; resend the whole context with keep_len 0",
                req.session_id,
                s.context.len()
            )));
        }
        check_tokens("new_tokens", &req.new_tokens, s.n_vocab)?;
        if keep + req.new_tokens.len() > MAX_CONTEXT_TOKENS {
            return Err(invalid(
                "new_tokens",
                format!(
                    "would grow the session's context to {} tokens; at most {MAX_CONTEXT_TOKENS}",
                    keep + req.new_tokens.len()
                ),
            ));
        }
        s.context.truncate(keep);
        s.context.extend_from_slice(&req.new_tokens);
        if s.context.is_empty() {
            return Err(invalid("new_tokens", "must not be empty on a session's first call (the context is empty)"));
        }
        if s.feature_dim > 0 {
            let rows = s.features.len().checked_div(s.feature_dim).unwrap_or(0).min(keep);
            s.features.truncate(rows * s.feature_dim);
            if let Some(f) = req.features {
                if f.dim as usize != s.feature_dim {
                    return Err(invalid(
                        "features.dim",
                        format!("must be {} (drafter {} was trained on that verifier width), got {}", s.feature_dim, s.name, f.dim),
                    ));
                }
                if f.first_row as usize != rows {
                    return Err(Status::failed_precondition(format!(
                        "`features.first_row` is {} but session {} holds {rows} rows; resend from keep_len 0",
                        f.first_row, req.session_id
                    )));
                }
                s.features.extend_from_slice(&f.data);
            }
            let rows = s.features.len() / s.feature_dim;
            if rows > s.context.len() {
                return Err(invalid("features", format!("cover {rows} rows but the context has {} tokens", s.context.len())));
            }
            if rows == 0 {
                return Err(Status::failed_precondition(format!(
                    "drafter {} is conditioned on verifier hidden states of width {}, but none arrived \
                     (start the verifier with --features)",
                    s.name, s.feature_dim
                )));
            }
        }
        let previous = req.previous.map(previous_from_pb).transpose()?;
        let features = (s.feature_dim > 0).then_some(Features { data: &s.features, dim: s.feature_dim });
        let max_len = req.max_len as usize;
        let dreq = DraftRequest { context: &s.context, previous: previous.as_ref(), max_len, features };
        let (mut tokens, mut probs, mut confidences) = match &mut s.drafter {
            SessionDrafter::Engine(d) => {
                let draft = d.propose(&dreq).map_err(|e| Status::internal(e.to_string()))?;
                (draft.tokens, draft.probs, draft.confidences)
            }
            SessionDrafter::Diffusion(d) => {
                let block = d.draft_block(&dreq).map_err(|e| Status::internal(e.to_string()))?;
                (block.tokens, block.probs, block.confidences)
            }
        };
        tokens.truncate(max_len);
        probs.resize(tokens.len(), 1.0);
        // Missing confidences stay missing: the policy prices a draft without one by its prior.
        confidences.truncate(tokens.len());
        Ok(pb::DraftResponse { tokens, probs, confidences, context_len: s.context.len() as u64 })
    }
}
