//! The engine's [`Drafter`] backed by a `duet.v1.Drafter` service.
//!
//! The engine hands a drafter the whole context every round; over the network only what changed
//! travels. [`RemoteDrafter`] remembers what it has sent for its session (the tokens, and how many
//! rows of verifier features) and sends `keep_len` plus the new tokens and rows. If the service
//! lost the session (it restarted, or freed it when idle) it answers FAILED_PRECONDITION and the
//! client resends the whole context once.
//!
//! A drafter that fails costs nothing but speed: the engine takes a plain verifier step. A call
//! that does not answer within the service's deadline (`--drafter-timeout-ms`) fails as a
//! timeout. [`RemoteDrafterService::fallback_session`] wraps a session in a
//! [`FallbackDrafter`] sharing the service's [`DrafterHealth`], so after a failure every
//! generation skips the service for a growing back-off window and a dead drafter process costs one
//! failed call per window rather than one per round.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use duet_proto::v1 as pb;
use duet_proto::v1::drafter_client::DrafterClient;
use duet_verifier::TokenId;
use tokio::runtime::Handle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::convert::previous_to_pb;
use super::server::MAX_MESSAGE_BYTES;
use crate::drafters::{DrafterHealth, FallbackDrafter};
use crate::engine::{Draft, DraftError, DraftFailure, DraftRequest, Drafter};

/// Time allowed for one draft call by default.
pub const DEFAULT_DRAFT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a lazily connecting channel with Duet's connect timeout (it reconnects by itself).
pub fn lazy_channel(url: &str, rt: &Handle) -> Result<Channel, tonic::transport::Error> {
    let _guard = rt.enter();
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A drafter service as the orchestrator sees it: one channel shared by every generation.
#[derive(Clone)]
pub struct RemoteDrafterService {
    client: DrafterClient<Channel>,
    rt: Handle,
    url: String,
    timeout: Duration,
    health: DrafterHealth,
    info: Arc<Mutex<Option<pb::DrafterInfoResponse>>>,
}

impl std::fmt::Debug for RemoteDrafterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDrafterService").field("url", &self.url).finish()
    }
}

impl RemoteDrafterService {
    /// A client of the service at `url` (e.g. `http://127.0.0.1:50061`); connects on first use.
    pub fn new(url: &str, rt: Handle, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let channel = lazy_channel(url, &rt)?;
        let client = DrafterClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            client,
            rt,
            url: url.to_owned(),
            timeout,
            health: DrafterHealth::new(format!("drafter service {url}")),
            info: Arc::default(),
        })
    }

    /// The service's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The service's failures and back-off window, shared by every session.
    pub fn health(&self) -> &DrafterHealth {
        &self.health
    }

    /// Uses other back-off windows than the default 0.5 s doubling to 10 s (tests use short ones).
    pub fn with_health(mut self, health: DrafterHealth) -> Self {
        self.health = health;
        self
    }

    /// A drafter for one generation that falls back to plain verifier steps while the service is
    /// down or slow (see [`FallbackDrafter`]); `label` names it in `duet_drafter_fallbacks_total`.
    pub fn fallback_session(
        &self,
        drafter: &str,
        feature_dim: usize,
        sampling: Option<pb::SamplingParams>,
        label: &'static str,
    ) -> FallbackDrafter {
        FallbackDrafter::new(Box::new(self.session(drafter, feature_dim, sampling)), self.health.clone(), label)
    }

    /// What the service offers; asked once, then remembered.
    pub async fn info(&self) -> Result<pb::DrafterInfoResponse, Status> {
        if let Some(i) = self.info.lock().ok().and_then(|i| i.clone()) {
            return Ok(i);
        }
        let mut req = tonic::Request::new(pb::DrafterInfoRequest {});
        req.set_timeout(self.timeout);
        let info = self.client.clone().info(req).await?.into_inner();
        if let Ok(mut slot) = self.info.lock() {
            *slot = Some(info.clone());
        }
        Ok(info)
    }

    /// The info if it was fetched already (without a call).
    pub fn cached_info(&self) -> Option<pb::DrafterInfoResponse> {
        self.info.lock().ok().and_then(|i| i.clone())
    }

    /// A drafter for one generation. `drafter` names the service's drafter ("" for its default);
    /// `feature_dim` > 0 sends the verifier's hidden states along.
    pub fn session(&self, drafter: &str, feature_dim: usize, sampling: Option<pb::SamplingParams>) -> RemoteDrafter {
        RemoteDrafter {
            service: self.clone(),
            session_id: new_session_id("d"),
            drafter: drafter.to_owned(),
            name: if drafter.is_empty() { "remote".to_owned() } else { format!("remote {drafter}") },
            feature_dim,
            sampling,
            sent: Vec::new(),
            sent_rows: 0,
        }
    }
}

/// A session id unique across processes and restarts: process id, start time and a counter.
pub fn new_session_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}{:x}-{:x}-{n}", std::process::id(), nanos as u64)
}

/// One generation's drafter on a drafter service.
///
/// [`Drafter::propose`] blocks on the tokio runtime: call it from a dedicated thread (the engine
/// runs there), never from an async task.
pub struct RemoteDrafter {
    service: RemoteDrafterService,
    session_id: String,
    drafter: String,
    name: String,
    feature_dim: usize,
    sampling: Option<pb::SamplingParams>,
    /// The context the service holds for this session, as far as this client knows.
    sent: Vec<TokenId>,
    /// Feature rows the service holds for this session.
    sent_rows: usize,
}

impl std::fmt::Debug for RemoteDrafter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDrafter").field("session_id", &self.session_id).field("sent", &self.sent.len()).finish()
    }
}

impl RemoteDrafter {
    /// The session id on the service.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub(crate) fn request(&self, req: &DraftRequest<'_>) -> pb::DraftRequest {
        let keep = self.sent.iter().zip(req.context).take_while(|(a, b)| a == b).count();
        let features = match req.features {
            Some(f) if self.feature_dim > 0 && f.dim == self.feature_dim => {
                let first = self.sent_rows.min(keep).min(f.rows());
                Some(pb::Features { dim: f.dim as u32, first_row: first as u64, data: f.data[first * f.dim..].to_vec() })
            }
            _ => None,
        };
        pb::DraftRequest {
            session_id: self.session_id.clone(),
            drafter: self.drafter.clone(),
            keep_len: keep as u64,
            new_tokens: req.context[keep..].to_vec(),
            features,
            previous: req.previous.map(previous_to_pb),
            max_len: req.max_len as u32,
            sampling: self.sampling,
        }
    }

    /// One draft call, bounded by the service's deadline here too (connecting included), so a
    /// slow or unreachable service costs at most that long.
    fn call(&self, msg: pb::DraftRequest) -> Result<pb::DraftResponse, Status> {
        let mut client = self.service.client.clone();
        let timeout = self.service.timeout;
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        let started = std::time::Instant::now();
        let late = || Status::deadline_exceeded(format!("no draft within {} ms", timeout.as_millis()));
        self.service
            .rt
            .block_on(async move {
                match tokio::time::timeout(timeout, client.draft(req)).await {
                    Ok(r) => r,
                    Err(_) => Err(late()),
                }
            })
            .map(|r| r.into_inner())
            // tonic's own deadline (the `grpc-timeout` header) may fire first, as CANCELLED.
            .map_err(|s| if s.code() != Code::DeadlineExceeded && started.elapsed() >= timeout { late() } else { s })
    }

    fn forget(&mut self) {
        self.sent.clear();
        self.sent_rows = 0;
    }

    fn error(&self, s: &Status) -> DraftError {
        let kind = if s.code() == Code::DeadlineExceeded { DraftFailure::Timeout } else { DraftFailure::Error };
        DraftError {
            drafter: self.name.clone(),
            reason: format!("{} ({:?}: {})", self.service.url, s.code(), s.message()),
            kind,
        }
    }
}

impl Drafter for RemoteDrafter {
    fn name(&self) -> &str {
        &self.name
    }

    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        if req.max_len == 0 {
            return Ok(Draft::default());
        }
        let mut res = self.call(self.request(req));
        if matches!(&res, Err(s) if s.code() == Code::FailedPrecondition) {
            // The service lost track of the session: resend the whole context once.
            self.forget();
            res = self.call(self.request(req));
        }
        match res {
            Ok(r) => {
                self.sent.clear();
                self.sent.extend_from_slice(req.context);
                self.sent_rows = req.features.map(|f| f.rows()).filter(|_| self.feature_dim > 0).unwrap_or(0);
                let mut tokens = r.tokens;
                tokens.truncate(req.max_len);
                let mut probs = r.probs;
                probs.resize(tokens.len(), 1.0);
                let mut confidences = r.confidences;
                confidences.truncate(tokens.len());
                Ok(Draft { tokens, probs, confidences, ..Draft::default() })
            }
            Err(s) => {
                self.forget();
                Err(self.error(&s))
            }
        }
    }
}

impl Drop for RemoteDrafter {
    fn drop(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        // Fire and forget: a lost close is cleaned up by the service's idle timeout.
        let mut client = self.service.client.clone();
        let session_id = std::mem::take(&mut self.session_id);
        let timeout = self.service.timeout;
        self.service.rt.spawn(async move {
            let mut req = tonic::Request::new(pb::CloseDraftSessionRequest { session_id });
            req.set_timeout(timeout);
            let _ = client.close_session(req).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_unique() {
        assert_ne!(new_session_id("d"), new_session_id("d"));
    }
}
