//! The `duet.v1.Verifier` service (`duet verifier serve`).
//!
//! The model itself runs on the verifier's own thread behind its bounded channel
//! (`duet_verifier::Verifier`); calls into it block, so each handler runs its call with
//! `spawn_blocking`, never on a tokio worker. Sessions live in a map keyed by a server-chosen id;
//! one call at a time per session (a second concurrent call is refused). The server answers
//! RESOURCE_EXHAUSTED when every session slot is taken, frees sessions on `CloseSession` and after
//! an idle timeout (a client that vanished without closing), and is NOT_SERVING until the model
//! has loaded. `MeasureCosts` lives in [`measure_costs`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use duet_proto::v1 as pb;
use duet_proto::v1::verifier_server::{Verifier as VerifierRpc, VerifierServer};
use duet_verifier::{ChatMessage, Session, Verdict, Verifier, VerifierError};
use tonic::{Request, Response, Status};

use super::convert::{check_session_id, check_tokens, invalid, status_from_verifier, verdict_to_pb};
use super::drafter_client::new_session_id;
use super::measure_costs;
use super::server::MAX_MESSAGE_BYTES;
use crate::engine::MAX_BLOCK_SIZE;
use crate::service::MAX_PROMPT_BYTES;

/// Limits of a verifier server, and what its model was loaded with.
#[derive(Debug, Clone)]
pub struct VerifierServiceConfig {
    /// A session unused this long is closed and its KV cache freed.
    pub idle_timeout: Duration,
    /// Sessions the model serves at once (`VerifierConfig::max_sessions`).
    pub max_sessions: u32,
    /// Whether the model returns hidden states (`VerifierConfig::features`).
    pub features: bool,
}

impl VerifierServiceConfig {
    /// The service limits for a verifier loaded with `config`.
    pub fn for_model(config: &duet_verifier::VerifierConfig) -> Self {
        Self { idle_timeout: Duration::from_secs(300), max_sessions: config.max_sessions, features: config.features }
    }
}

struct Entry {
    session: Session,
    last_used: Instant,
}

type Sessions = Arc<Mutex<HashMap<String, Arc<Mutex<Entry>>>>>;

/// The `duet.v1.Verifier` implementation.
#[derive(Clone)]
pub struct VerifierService {
    verifier: Arc<OnceLock<Verifier>>,
    sessions: Sessions,
    config: VerifierServiceConfig,
}

impl std::fmt::Debug for VerifierService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierService").field("loaded", &self.verifier.get().is_some()).finish()
    }
}

impl VerifierService {
    /// A service with no model yet: every call but health answers UNAVAILABLE until [`loaded`](Self::loaded).
    pub fn new(config: VerifierServiceConfig) -> Self {
        Self { verifier: Arc::new(OnceLock::new()), sessions: Arc::default(), config }
    }

    /// A service over an already loaded verifier.
    pub fn with_verifier(verifier: Verifier, config: VerifierServiceConfig) -> Self {
        let s = Self::new(config);
        s.loaded(verifier);
        s
    }

    /// Hands the loaded model to the service.
    pub fn loaded(&self, verifier: Verifier) {
        let _ = self.verifier.set(verifier);
    }

    /// The tonic server for this service, with Duet's message size limits.
    pub fn into_server(self) -> VerifierServer<Self> {
        VerifierServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Closes sessions idle for longer than the timeout; run it now and then, on a blocking
    /// thread (freeing a session sends to the verifier's bounded queue).
    pub fn reap_idle(&self) -> usize {
        let timeout = self.config.idle_timeout;
        let Ok(mut map) = self.sessions.lock() else { return 0 };
        let before = map.len();
        // A session busy with a call is in use, whatever its timestamp says.
        map.retain(|id, e| {
            let keep = e.try_lock().map(|e| e.last_used.elapsed() < timeout).unwrap_or(true);
            if !keep {
                tracing::info!(session = %id, "closing an idle verifier session");
            }
            keep
        });
        before - map.len()
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn verifier(&self) -> Result<&Verifier, Status> {
        self.verifier.get().ok_or_else(|| Status::unavailable("the verifier model is still loading"))
    }

    fn entry(&self, id: &str) -> Result<Arc<Mutex<Entry>>, Status> {
        check_session_id(id)?;
        let map = self.sessions.lock().map_err(|_| Status::internal("session map poisoned"))?;
        map.get(id).cloned().ok_or_else(|| Status::not_found(format!("no verifier session {id} (closed, or idle too long)")))
    }

    /// Runs `f` on a session on a blocking thread and answers with its verdict.
    async fn on_session(
        &self,
        id: &str,
        return_hidden: bool,
        f: impl FnOnce(&mut Session) -> Result<Verdict, VerifierError> + Send + 'static,
    ) -> Result<Response<pb::Verdict>, Status> {
        let verifier = self.verifier()?;
        let feature_dim = verifier.info().n_embd as usize;
        let entry = self.entry(id)?;
        let res = tokio::task::spawn_blocking(move || {
            let mut e = entry
                .try_lock()
                .map_err(|_| Status::failed_precondition("the session is busy with another call"))?;
            e.last_used = Instant::now();
            let mut v = f(&mut e.session).map_err(|e| status_from_verifier(&e))?;
            e.last_used = Instant::now();
            if !return_hidden {
                v.features.clear();
            }
            // The rows are the tokens this call added to the KV cache, so they end at its new
            // length (prefill may reuse a cached prefix and evaluate only the rest).
            let rows = v.features.len().checked_div(feature_dim).unwrap_or(0);
            let first_row = e.session.len().saturating_sub(rows);
            Ok::<_, Status>(verdict_to_pb(v, e.session.len(), feature_dim, first_row))
        })
        .await
        .map_err(|e| Status::internal(format!("verifier call panicked: {e}")))?;
        res.map(Response::new)
    }
}

/// Runs a blocking call to the verifier on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VerifierError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("verifier call panicked: {e}")))?
        .map_err(|e| status_from_verifier(&e))
}

#[tonic::async_trait]
impl VerifierRpc for VerifierService {
    async fn info(&self, _: Request<pb::VerifierInfoRequest>) -> Result<Response<pb::VerifierInfoResponse>, Status> {
        let v = self.verifier()?;
        let i = v.info();
        let features = self.feature_dim()?;
        Ok(Response::new(pb::VerifierInfoResponse {
            description: i.description.clone(),
            model_path: i.path.display().to_string(),
            n_vocab: i.n_vocab as u32,
            ctx_size: i.ctx_size as u32,
            max_sessions: self.max_sessions()?,
            eog_tokens: i.eog.clone(),
            feature_dim: features as u32,
            has_chat_template: i.chat_template.is_some(),
        }))
    }

    async fn vocabulary(&self, _: Request<pb::VocabularyRequest>) -> Result<Response<pb::VocabularyResponse>, Status> {
        let v = self.verifier()?;
        Ok(Response::new(pb::VocabularyResponse { pieces: v.info().pieces.clone() }))
    }

    async fn tokenize(&self, request: Request<pb::TokenizeRequest>) -> Result<Response<pb::TokenizeResponse>, Status> {
        let v = self.verifier()?.clone();
        let r = request.into_inner();
        if r.text.len() > MAX_PROMPT_BYTES {
            return Err(invalid("text", format!("must be at most {MAX_PROMPT_BYTES} bytes, got {}", r.text.len())));
        }
        let tokens = blocking(move || v.tokenize(&r.text, r.parse_special)).await?;
        Ok(Response::new(pb::TokenizeResponse { tokens }))
    }

    async fn apply_chat_template(
        &self,
        request: Request<pb::ApplyChatTemplateRequest>,
    ) -> Result<Response<pb::ApplyChatTemplateResponse>, Status> {
        let v = self.verifier()?.clone();
        let messages: Vec<ChatMessage> = request
            .into_inner()
            .messages
            .into_iter()
            .map(|m| ChatMessage { role: m.role, content: m.content })
            .collect();
        if messages.is_empty() {
            return Err(invalid("messages", "must hold at least one message"));
        }
        let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
        if bytes > MAX_PROMPT_BYTES {
            return Err(invalid("messages", format!("must be at most {MAX_PROMPT_BYTES} bytes of text, got {bytes}")));
        }
        if let Some((i, m)) = messages.iter().enumerate().find(|(_, m)| !["system", "user", "assistant"].contains(&m.role.as_str())) {
            return Err(invalid(&format!("messages[{i}].role"), format!("must be system, user or assistant, got {:?}", m.role)));
        }
        let prompt = blocking(move || v.chat_prompt(&messages)).await?;
        Ok(Response::new(pb::ApplyChatTemplateResponse { prompt }))
    }

    async fn open_session(&self, _: Request<pb::OpenSessionRequest>) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let v = self.verifier()?.clone();
        let ctx_size = v.info().ctx_size as u32;
        let reaper = self.clone();
        let session = blocking(move || {
            // A slot held by a vanished client may be the one this session needs.
            reaper.reap_idle();
            v.open_session()
        })
        .await?;
        let id = new_session_id("v");
        self.sessions
            .lock()
            .map_err(|_| Status::internal("session map poisoned"))?
            .insert(id.clone(), Arc::new(Mutex::new(Entry { session, last_used: Instant::now() })));
        Ok(Response::new(pb::OpenSessionResponse { session_id: id, ctx_size }))
    }

    async fn close_session(&self, request: Request<pb::CloseSessionRequest>) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        check_session_id(&id)?;
        let removed = self.sessions.lock().map_err(|_| Status::internal("session map poisoned"))?.remove(&id);
        let existed = removed.is_some();
        // Dropping the last handle frees the sequence (a call in flight holds one until it ends);
        // that sends to the verifier's bounded queue, so not on an async worker. Answering after
        // it means a session opened next finds the slot free.
        let _ = tokio::task::spawn_blocking(move || drop(removed)).await;
        Ok(Response::new(pb::CloseSessionResponse { existed }))
    }

    async fn prefill(&self, request: Request<pb::PrefillRequest>) -> Result<Response<pb::Verdict>, Status> {
        let r = request.into_inner();
        let info = self.verifier()?.info();
        let (n_vocab, ctx_size) = (info.n_vocab, info.ctx_size);
        if r.tokens.is_empty() {
            return Err(invalid("tokens", "must hold at least one token"));
        }
        // The verifier refuses a prompt that does not fit too; this names the field before any work.
        if r.tokens.len() > ctx_size {
            return Err(invalid(
                "tokens",
                format!("must hold at most {ctx_size} tokens (the verifier's context, --ctx-size), got {}", r.tokens.len()),
            ));
        }
        check_tokens("tokens", &r.tokens, n_vocab)?;
        self.check_hidden(r.return_hidden_states)?;
        self.on_session(&r.session_id, r.return_hidden_states, move |s| s.prefill(&r.tokens)).await
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::Verdict>, Status> {
        let r = request.into_inner();
        let n_vocab = self.verifier()?.info().n_vocab;
        if r.draft.len() > MAX_BLOCK_SIZE {
            return Err(invalid("draft", format!("must hold at most {MAX_BLOCK_SIZE} tokens, got {}", r.draft.len())));
        }
        check_tokens("draft", &r.draft, n_vocab)?;
        if !r.draft_probs.is_empty() && r.draft_probs.len() != r.draft.len() {
            return Err(invalid(
                "draft_probs",
                format!("must be empty or hold one probability per draft token ({}), got {}", r.draft.len(), r.draft_probs.len()),
            ));
        }
        self.check_hidden(r.return_hidden_states)?;
        self.on_session(&r.session_id, r.return_hidden_states, move |s| s.verify(&r.draft)).await
    }

    async fn step(&self, request: Request<pb::StepRequest>) -> Result<Response<pb::Verdict>, Status> {
        let r = request.into_inner();
        self.check_hidden(r.return_hidden_states)?;
        self.on_session(&r.session_id, r.return_hidden_states, |s| s.step()).await
    }

    async fn measure_costs(&self, request: Request<pb::MeasureCostsRequest>) -> Result<Response<pb::MeasureCostsResponse>, Status> {
        let v = self.verifier()?.clone();
        let plan = measure_costs::check(request.into_inner(), v.info().n_vocab, v.info().ctx_size)?;
        let reaper = self.clone();
        let answer = tokio::task::spawn_blocking(move || {
            // A slot held by a vanished client may be the one the scratch session needs.
            reaper.reap_idle();
            measure_costs::run(&v, plan)
        })
        .await
        .map_err(|e| Status::internal(format!("verifier call panicked: {e}")))??;
        Ok(Response::new(answer))
    }
}

impl VerifierService {
    /// Width of the hidden states the server returns (0 when it was started without them).
    fn feature_dim(&self) -> Result<usize, Status> {
        let v = self.verifier()?;
        Ok(if self.config.features { v.info().n_embd as usize } else { 0 })
    }

    fn max_sessions(&self) -> Result<u32, Status> {
        Ok(self.config.max_sessions)
    }

    fn check_hidden(&self, wanted: bool) -> Result<(), Status> {
        if wanted && self.feature_dim()? == 0 {
            return Err(invalid(
                "return_hidden_states",
                "needs a verifier started with hidden states (`duet verifier serve --features`)",
            ));
        }
        Ok(())
    }
}
