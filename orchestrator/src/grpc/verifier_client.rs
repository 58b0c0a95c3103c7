//! The engine's [`VerifierSession`] backed by `duet.v1.Verifier` services, and the set of verifier
//! replicas an orchestrator talks to.
//!
//! Every replica must serve the same model (checked at connect time). A new session goes to the
//! replica with the fewest sessions this orchestrator has open on it (ties rotate), falling over
//! to the next replica when one is full or down; once opened, a session stays on its replica for
//! the whole generation, since its KV cache lives there.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use duet_proto::v1 as pb;
use duet_proto::v1::verifier_client::VerifierClient;
use duet_verifier::{ChatMessage, ModelInfo, TokenId, Verdict, VerifierError};
use tokio::runtime::Handle;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::convert::{verdict_from_pb, verifier_from_status};
use super::drafter_client::lazy_channel;
use super::server::MAX_MESSAGE_BYTES;
use crate::engine::{CostCurve, VerifierSession};

/// Time allowed for one verifier call by default: a long prompt on a small CPU takes a while.
pub const DEFAULT_VERIFIER_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of connecting to the verifier replicas.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An address is not a valid URL.
    #[error("bad verifier address {url}: {reason}")]
    BadUrl {
        /// The address.
        url: String,
        /// Why.
        reason: String,
    },
    /// A replica did not answer.
    #[error("verifier {url} is not available: {status}")]
    Unavailable {
        /// The address.
        url: String,
        /// Its answer.
        status: Status,
    },
    /// The replicas serve different models.
    #[error("verifier replicas differ: {0}")]
    Mismatch(String),
    /// No address was given.
    #[error("no verifier address given (--verifier URL)")]
    NoReplica,
}

struct Replica {
    url: String,
    client: VerifierClient<Channel>,
    /// Sessions this process has open on the replica.
    open: Arc<AtomicUsize>,
}

/// The verifier replicas behind an orchestrator.
pub struct RemoteVerifiers {
    replicas: Vec<Replica>,
    info: Arc<ModelInfo>,
    feature_dim: usize,
    rt: Handle,
    timeout: Duration,
    next: AtomicUsize,
    total_sessions: usize,
}

impl std::fmt::Debug for RemoteVerifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.replicas.iter().map(|r| r.url.as_str()).collect();
        f.debug_struct("RemoteVerifiers").field("replicas", &urls).finish()
    }
}

fn client(channel: Channel) -> VerifierClient<Channel> {
    VerifierClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

impl RemoteVerifiers {
    /// Connects to every replica (once each has loaded its model: call again on UNAVAILABLE),
    /// checks that they serve one model, and fetches the vocabulary for detokenizing.
    pub async fn connect(urls: &[String], rt: Handle, timeout: Duration) -> Result<Self, ConnectError> {
        if urls.is_empty() {
            return Err(ConnectError::NoReplica);
        }
        let mut replicas = Vec::with_capacity(urls.len());
        let mut infos = Vec::with_capacity(urls.len());
        for url in urls {
            let channel = lazy_channel(url, &rt).map_err(|e| ConnectError::BadUrl { url: url.clone(), reason: e.to_string() })?;
            let mut c = client(channel);
            let info = c
                .info(request(pb::VerifierInfoRequest {}, timeout))
                .await
                .map_err(|status| ConnectError::Unavailable { url: url.clone(), status })?
                .into_inner();
            infos.push(info);
            replicas.push(Replica { url: url.clone(), client: c, open: Arc::default() });
        }
        let first = &infos[0];
        for (r, i) in replicas.iter().zip(&infos).skip(1) {
            if i.n_vocab != first.n_vocab || i.description != first.description || i.feature_dim != first.feature_dim || i.ctx_size != first.ctx_size {
                return Err(ConnectError::Mismatch(format!(
                    "{} serves {} ({} ids, context {}, features {}) but {} serves {} ({} ids, context {}, features {})",
                    replicas[0].url, first.description, first.n_vocab, first.ctx_size, first.feature_dim,
                    r.url, i.description, i.n_vocab, i.ctx_size, i.feature_dim
                )));
            }
        }
        let pieces = replicas[0]
            .client
            .clone()
            .vocabulary(request(pb::VocabularyRequest {}, timeout))
            .await
            .map_err(|status| ConnectError::Unavailable { url: replicas[0].url.clone(), status })?
            .into_inner()
            .pieces;
        let info = ModelInfo {
            path: PathBuf::from(&first.model_path),
            description: first.description.clone(),
            n_vocab: first.n_vocab as usize,
            n_layer: 0,
            n_embd: first.feature_dim,
            ctx_size: first.ctx_size as usize,
            kv_cache: None,
            eog: first.eog_tokens.clone(),
            pieces,
            // The template is applied on the verifier (`ApplyChatTemplate`).
            chat_template: None,
            load_s: 0.0,
        };
        Ok(Self {
            replicas,
            info: Arc::new(info),
            feature_dim: first.feature_dim as usize,
            rt,
            timeout,
            next: AtomicUsize::new(0),
            total_sessions: infos.iter().map(|i| i.max_sessions as usize).sum(),
        })
    }

    /// The model the replicas serve (vocabulary, end-of-generation tokens, context length).
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Width of the hidden states the replicas return; 0 when they were started without them.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// Sessions all replicas serve at once, together.
    pub fn total_sessions(&self) -> usize {
        self.total_sessions
    }

    /// The replicas' addresses.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.url.clone()).collect()
    }

    /// Sessions this process has open on each replica, in address order.
    pub fn open_sessions(&self) -> Vec<usize> {
        self.replicas.iter().map(|r| r.open.load(Ordering::Relaxed)).collect()
    }

    /// Whether any replica answers `Info` within `timeout` (for health checks). Channels
    /// reconnect by themselves, so a replica that comes back is seen at the next probe.
    pub async fn probe(&self, timeout: Duration) -> Result<(), Status> {
        let mut last = Status::unavailable("no verifier replica");
        for r in &self.replicas {
            let mut c = r.client.clone();
            let call = c.info(request(pb::VerifierInfoRequest {}, timeout));
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(s)) => last = Status::unavailable(format!("verifier {}: {}", r.url, s.message())),
                Err(_) => last = Status::unavailable(format!("verifier {} did not answer within {timeout:?}", r.url)),
            }
        }
        Err(last)
    }

    /// Replica indices in the order to try them: fewest open sessions first, ties rotating.
    fn order(&self) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.replicas.len();
        let mut idx: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        idx.sort_by_key(|&i| self.replicas[i].open.load(Ordering::Relaxed));
        idx
    }

    /// Runs `f` on the first replica that is up.
    async fn any<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(VerifierClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut last = Status::unavailable("no verifier replica");
        for i in self.order() {
            match f(self.replicas[i].client.clone()).await {
                Err(s) if s.code() == Code::Unavailable => {
                    last = Status::unavailable(format!("verifier {}: {}", self.replicas[i].url, s.message()));
                }
                r => return r,
            }
        }
        Err(last)
    }

    /// Tokenizes text with the model's tokenizer.
    pub async fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<TokenId>, Status> {
        let t = self.timeout;
        self.any(|mut c| {
            let req = request(pb::TokenizeRequest { text: text.to_owned(), parse_special }, t);
            async move { c.tokenize(req).await.map(|r| r.into_inner().tokens) }
        })
        .await
    }

    /// Formats chat messages with the model's chat template.
    pub async fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, Status> {
        let t = self.timeout;
        let messages: Vec<pb::ChatMessage> =
            messages.iter().map(|m| pb::ChatMessage { role: m.role.clone(), content: m.content.clone() }).collect();
        self.any(|mut c| {
            let req = request(pb::ApplyChatTemplateRequest { messages: messages.clone() }, t);
            async move { c.apply_chat_template(req).await.map(|r| r.into_inner().prompt) }
        })
        .await
    }

    /// The verifier's cost curve c(k) for blocks of `sizes` drafts at `context` (`MeasureCosts`,
    /// `repeats` 0 for the server's default), measured on the replica where the model runs, so the
    /// hops do not blur it. Replicas serve one model and are assumed to run on alike machines, so the
    /// first that answers measures (a full or unreachable one passes to the next). Returns that
    /// replica's address with the curve.
    pub async fn measure_costs(&self, context: &[TokenId], sizes: &[usize], repeats: u32) -> Result<(String, CostCurve), Status> {
        let msg = pb::MeasureCostsRequest {
            context: context.to_vec(),
            sizes: sizes.iter().map(|&k| k as u32).collect(),
            repeats,
        };
        let mut last = Status::unavailable("no verifier replica");
        for i in self.order() {
            let r = &self.replicas[i];
            match r.client.clone().measure_costs(request(msg.clone(), self.timeout)).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let sizes: Vec<usize> = resp.sizes.iter().map(|&k| k as usize).collect();
                    let curve = CostCurve::from_times(&sizes, &resp.seconds)
                        .map_err(|e| Status::internal(format!("verifier {} measured a bad cost curve: {e}", r.url)))?;
                    return Ok((r.url.clone(), curve));
                }
                Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                    last = Status::new(s.code(), format!("verifier {}: {}", r.url, s.message()));
                }
                Err(s) => return Err(Status::new(s.code(), format!("verifier {}: {}", r.url, s.message()))),
            }
        }
        Err(last)
    }

    /// Opens a session on the least busy replica that has room. With `hidden_states`, every
    /// verdict carries the verifier's hidden states (the replicas must have them on).
    pub async fn open_session(
        &self,
        sampling: Option<pb::SamplingParams>,
        hidden_states: bool,
    ) -> Result<RemoteVerifierSession, Status> {
        let mut last = Status::unavailable("no verifier replica");
        for i in self.order() {
            let r = &self.replicas[i];
            match r.client.clone().open_session(request(pb::OpenSessionRequest {}, self.timeout)).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    r.open.fetch_add(1, Ordering::Relaxed);
                    return Ok(RemoteVerifierSession {
                        client: r.client.clone(),
                        url: r.url.clone(),
                        open: r.open.clone(),
                        rt: self.rt.clone(),
                        id: resp.session_id,
                        ctx_size: resp.ctx_size as usize,
                        len: 0,
                        sampling,
                        hidden_states,
                        timeout: self.timeout,
                    });
                }
                Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                    tracing::debug!(replica = %r.url, status = %s, "verifier replica cannot take a session");
                    last = Status::new(s.code(), format!("verifier {}: {}", r.url, s.message()));
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }
}

/// One generation's session on a verifier replica.
///
/// Its methods block on the tokio runtime: call them from a dedicated thread (the engine runs
/// there), never from an async task. Dropping it closes the session (and frees its KV cache).
pub struct RemoteVerifierSession {
    client: VerifierClient<Channel>,
    url: String,
    open: Arc<AtomicUsize>,
    rt: Handle,
    id: String,
    ctx_size: usize,
    /// Tokens in the remote KV cache, from the last verdict.
    len: usize,
    sampling: Option<pb::SamplingParams>,
    hidden_states: bool,
    timeout: Duration,
}

impl std::fmt::Debug for RemoteVerifierSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteVerifierSession").field("replica", &self.url).field("id", &self.id).finish()
    }
}

impl RemoteVerifierSession {
    /// The replica this session lives on.
    pub fn replica(&self) -> &str {
        &self.url
    }

    /// The session id on the replica.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Closes the session and waits for the replica's answer, so its slot is free when this
    /// returns (dropping the session closes it in the background). Blocks on the runtime, like
    /// every call of the session. Returns whether the replica still had the session.
    pub fn close(mut self) -> Result<bool, Status> {
        let mut c = self.client.clone();
        let req = request(pb::CloseSessionRequest { session_id: std::mem::take(&mut self.id) }, self.timeout);
        self.rt.block_on(async move { c.close_session(req).await }).map(|r| r.into_inner().existed)
    }

    fn finish(
        &mut self,
        op: &'static str,
        res: Result<tonic::Response<pb::Verdict>, Status>,
        draft_len: usize,
    ) -> Result<Verdict, VerifierError> {
        let v = res.map_err(|s| verifier_from_status(op, &s))?.into_inner();
        let (verdict, len) = verdict_from_pb(v, draft_len)?;
        self.len = len;
        Ok(verdict)
    }
}

impl VerifierSession for RemoteVerifierSession {
    fn prefill(&mut self, prompt: &[TokenId]) -> Result<Verdict, VerifierError> {
        let mut c = self.client.clone();
        let req = request(
            pb::PrefillRequest {
                session_id: self.id.clone(),
                tokens: prompt.to_vec(),
                sampling: self.sampling,
                return_hidden_states: self.hidden_states,
            },
            self.timeout,
        );
        let res = self.rt.block_on(async move { c.prefill(req).await });
        self.finish("remote prefill", res, 0)
    }

    fn step(&mut self) -> Result<Verdict, VerifierError> {
        let mut c = self.client.clone();
        let req = request(
            pb::StepRequest { session_id: self.id.clone(), sampling: self.sampling, return_hidden_states: self.hidden_states },
            self.timeout,
        );
        let res = self.rt.block_on(async move { c.step(req).await });
        self.finish("remote step", res, 0)
    }

    fn verify(&mut self, draft: &[TokenId]) -> Result<Verdict, VerifierError> {
        let mut c = self.client.clone();
        let req = request(
            pb::VerifyRequest {
                session_id: self.id.clone(),
                draft: draft.to_vec(),
                draft_probs: Vec::new(),
                sampling: self.sampling,
                return_hidden_states: self.hidden_states,
            },
            self.timeout,
        );
        let res = self.rt.block_on(async move { c.verify(req).await });
        self.finish("remote verify", res, draft.len())
    }

    fn room(&self) -> usize {
        self.ctx_size.saturating_sub(self.len)
    }
}

impl Drop for RemoteVerifierSession {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if self.id.is_empty() {
            // Closed already (`close`).
            return;
        }
        // Fire and forget: a lost close is cleaned up by the replica's idle timeout.
        let mut c = self.client.clone();
        let req = request(pb::CloseSessionRequest { session_id: std::mem::take(&mut self.id) }, self.timeout);
        self.rt.spawn(async move {
            let _ = c.close_session(req).await;
        });
    }
}
