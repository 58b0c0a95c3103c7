//! The generation service's [`Backend`] over a drafter service and verifier replicas: what
//! `duet orchestrator serve` runs. Tokenizing and the chat template go to a verifier replica, text
//! is detokenized locally from the vocabulary fetched at start-up, each generation opens a
//! [`RemoteVerifierSession`](super::RemoteVerifierSession) on the least busy replica and a
//! [`RemoteDrafter`](super::RemoteDrafter) session on the drafter service.
//!
//! The drafter service may be down: hybrid generations then run as plain AR steps (same output,
//! lower speed), so a missing drafter never refuses a request unless it is known not to offer the
//! drafter asked for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use duet_proto::v1 as pb;
use duet_verifier::{ChatMessage, TokenId};
use tokio::runtime::Handle;
use tonic::{Code, Status};

use super::drafter_factory::kind_name;
use super::{RemoteDrafterService, RemoteVerifiers};
use crate::drafters::DrafterKind;
use crate::engine::{Drafter, Mode, VerifierSession};
use crate::service::{Backend, FIM_MARKERS, ServiceError, fim_prompt};

/// The service's backend over remote models.
#[derive(Debug)]
pub struct RemoteBackend {
    verifiers: RemoteVerifiers,
    drafter: RemoteDrafterService,
    name: String,
    rt: Handle,
    fim: bool,
    /// Why the verifiers cannot serve, as the last probe found (None: they answer).
    down: Mutex<Option<String>>,
}

/// How often [`watch_verifiers`] probes by default.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probes the verifiers every `every` and turns the gRPC health (and the backend's
/// [`Backend::available`], which HTTP `/health` reports) SERVING or NOT_SERVING with them, logging
/// each change once. Runs until the task is dropped.
pub async fn watch_verifiers(backend: Arc<RemoteBackend>, health: Option<super::Health>, every: Duration) {
    let mut serving = None;
    loop {
        let probe = backend.verifiers.probe(every.max(Duration::from_millis(500))).await;
        let up = probe.is_ok();
        if let Ok(mut d) = backend.down.lock() {
            *d = probe.as_ref().err().map(|s| s.message().to_owned());
        }
        if serving != Some(up) {
            match &probe {
                Ok(()) if serving.is_some() => tracing::warn!("the verifiers answer again; serving"),
                Ok(()) => {}
                Err(s) => tracing::warn!(
                    status = %s.message(),
                    "no verifier answers; requests get UNAVAILABLE / 503 until one does"
                ),
            }
            if let Some(h) = &health {
                if up {
                    h.set_serving().await;
                } else {
                    h.set_not_serving().await;
                }
            }
            serving = Some(up);
        }
        tokio::time::sleep(every).await;
    }
}

fn service_error(what: &str, s: &Status) -> ServiceError {
    let msg = format!("{what}: {}", s.message());
    match s.code() {
        Code::InvalidArgument => ServiceError::Invalid(msg),
        Code::OutOfRange => ServiceError::ContextLength(msg),
        Code::Unavailable => ServiceError::Unavailable(format!("no verifier is available ({msg}); retry later")),
        Code::ResourceExhausted => ServiceError::Unavailable(msg),
        _ => ServiceError::Internal(msg),
    }
}

impl RemoteBackend {
    /// A backend over connected verifiers and a drafter service. Asks the drafter service what it
    /// offers (a drafter that is down is asked again later) and checks it against the verifiers.
    pub async fn new(verifiers: RemoteVerifiers, drafter: RemoteDrafterService, rt: Handle) -> Result<Self, ServiceError> {
        let mut fim = true;
        for marker in FIM_MARKERS {
            fim &= verifiers.tokenize(marker, true).await.map_err(|s| service_error("tokenizing", &s))?.len() == 1;
        }
        let name = verifiers
            .info()
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| verifiers.info().description.clone());
        let backend = Self { verifiers, drafter, name, rt, fim, down: Mutex::new(None) };
        match backend.drafter.info().await {
            Ok(info) => {
                for d in &info.drafters {
                    if let Err(e) = backend.fits(d) {
                        tracing::warn!(drafter = %d.name, "{e}");
                    }
                }
            }
            Err(s) => tracing::warn!(
                drafter = %backend.drafter.url(),
                status = %s,
                "the drafter service does not answer yet; hybrid generations take plain verifier steps until it does"
            ),
        }
        Ok(backend)
    }

    /// The verifier replicas.
    pub fn verifiers(&self) -> &RemoteVerifiers {
        &self.verifiers
    }

    /// Whether a drafter of the service can work with these verifiers.
    fn fits(&self, d: &pb::DrafterDescription) -> Result<(), ServiceError> {
        let info = self.verifiers.info();
        if d.verifier_vocab_size != 0 && d.verifier_vocab_size as usize != info.n_vocab {
            return Err(ServiceError::Invalid(format!(
                "`drafter` {} was made for a vocabulary of {} ids but the verifier has {}",
                d.name, d.verifier_vocab_size, info.n_vocab
            )));
        }
        if d.feature_dim != 0 && d.feature_dim as usize != self.verifiers.feature_dim() {
            return Err(ServiceError::Invalid(format!(
                "`drafter` {} is conditioned on verifier hidden states of width {}, the verifiers give {} \
                 (start them with `duet verifier serve --features`, with the model the drafter was trained for)",
                d.name,
                d.feature_dim,
                self.verifiers.feature_dim()
            )));
        }
        Ok(())
    }

    /// The drafter's description, if the service has answered.
    fn described(&self, kind: DrafterKind) -> Option<pb::DrafterDescription> {
        let info = match self.drafter.cached_info() {
            Some(i) => Some(i),
            None => self.rt.block_on(self.drafter.info()).ok(),
        }?;
        info.drafters.into_iter().find(|d| d.name == kind_name(kind))
    }
}

impl Backend for RemoteBackend {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn ctx_size(&self) -> usize {
        self.verifiers.info().ctx_size
    }

    fn tokenize(&self, text: &str) -> Result<Vec<TokenId>, ServiceError> {
        self.rt.block_on(self.verifiers.tokenize(text, true)).map_err(|s| service_error("tokenizing", &s))
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, ServiceError> {
        self.rt
            .block_on(self.verifiers.chat_prompt(messages))
            .map_err(|s| service_error("applying the chat template", &s))
    }

    fn infill_prompt(&self, prefix: &str, suffix: &str) -> Result<String, ServiceError> {
        fim_prompt(&self.name, self.fim, prefix, suffix)
    }

    fn detokenize(&self, tokens: &[TokenId]) -> Vec<u8> {
        self.verifiers.info().detokenize(tokens)
    }

    fn is_eog(&self, token: TokenId) -> bool {
        self.verifiers.info().is_eog(token)
    }

    fn check(&self, mode: Mode, drafter: DrafterKind) -> Result<(), ServiceError> {
        if mode == Mode::Ar {
            return Ok(());
        }
        let kind = if mode == Mode::Diffusion { DrafterKind::Diffusion } else { drafter };
        // `check` runs on the async side (submit): never wait for the drafter service here.
        let Some(info) = self.drafter.cached_info() else {
            if mode == Mode::Diffusion {
                return Err(ServiceError::Unavailable(format!(
                    "`mode` diffusion needs the drafter service, which has not answered ({})",
                    self.drafter.url()
                )));
            }
            return Ok(());
        };
        let Some(d) = info.drafters.iter().find(|d| d.name == kind_name(kind)) else {
            let offered: Vec<&str> = info.drafters.iter().map(|d| d.name.as_str()).collect();
            return Err(ServiceError::Invalid(format!(
                "`drafter` {} is not offered by the drafter service at {} (it offers {offered:?})",
                kind_name(kind),
                self.drafter.url()
            )));
        };
        self.fits(d)?;
        if mode == Mode::Diffusion && d.feature_dim != 0 {
            return Err(ServiceError::Invalid(
                "`mode` diffusion needs a standalone drafter, but the drafter service's is conditioned on verifier features"
                    .into(),
            ));
        }
        Ok(())
    }

    fn open_session(&self) -> Result<Box<dyn VerifierSession + Send>, ServiceError> {
        // Hidden states travel only when the verifiers have them and a drafter can use them.
        let wanted = self.verifiers.feature_dim() > 0
            && self.drafter.cached_info().is_some_and(|i| {
                i.drafters.iter().any(|d| d.feature_dim as usize == self.verifiers.feature_dim())
            });
        let session = self
            .rt
            .block_on(self.verifiers.open_session(None, wanted))
            .map_err(|s| service_error("opening a verifier session", &s))?;
        Ok(Box::new(session))
    }

    fn available(&self) -> Result<(), String> {
        match self.down.lock().ok().and_then(|d| d.clone()) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn new_drafter(&self, kind: DrafterKind) -> Result<Box<dyn Drafter>, ServiceError> {
        let feature_dim = self
            .described(kind)
            .map(|d| d.feature_dim as usize)
            .filter(|&d| d > 0 && d == self.verifiers.feature_dim())
            .unwrap_or(0);
        Ok(Box::new(self.drafter.fallback_session(kind_name(kind), feature_dim, None, kind_name(kind))))
    }
}
