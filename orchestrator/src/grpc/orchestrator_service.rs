//! The `duet.v1.Orchestrator` service: whole generations over the transport-neutral generation
//! service ([`crate::service`]), whose backend is the in-process models (`duet serve`) or the
//! remote drafter and verifiers (`duet orchestrator serve`).
//!
//! Admission, cancellation and stop strings are the generation service's; this file maps requests
//! and errors to and from the wire. Dropping a [`GenerationStream`] cancels its generation (and
//! frees its verifier session), so a client that goes away, cancels, or runs out of its deadline
//! stops the work: for `Generate` tonic drops the handler at the deadline, for `GenerateStream`
//! the forwarding task stops at the deadline or when the client's stream closes.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use duet_proto::v1 as pb;
use duet_proto::v1::orchestrator_server::{Orchestrator as OrchestratorRpc, OrchestratorServer};
use duet_verifier::ChatMessage;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{invalid, stats_to_pb};
use super::server::{MAX_MESSAGE_BYTES, deadline};
use crate::drafters::DrafterKind;
use crate::engine::Mode;
use crate::service::{
    Event, FinishReason, GenerationRequest, GenerationService, GenerationStream, Prompt, Sampling, ServiceError,
};

/// Stream events buffered per call before the generation waits for the client.
const STREAM_BUFFER: usize = 16;

/// The `duet.v1.Orchestrator` implementation.
#[derive(Clone, Default)]
pub struct OrchestratorService {
    service: Arc<OnceLock<GenerationService>>,
}

impl std::fmt::Debug for OrchestratorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorService").field("ready", &self.service.get().is_some()).finish()
    }
}

impl OrchestratorService {
    /// A service that answers UNAVAILABLE until [`ready`](Self::ready) (models loading, verifiers
    /// not connected yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A service over a running generation service.
    pub fn with_service(service: GenerationService) -> Self {
        let s = Self::new();
        s.ready(service);
        s
    }

    /// Hands the generation service over once the models are there.
    pub fn ready(&self, service: GenerationService) {
        let _ = self.service.set(service);
    }

    /// The tonic server for this service, with Duet's message size limits.
    pub fn into_server(self) -> OrchestratorServer<Self> {
        OrchestratorServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn submit(&self, request: pb::GenerateRequest) -> Result<GenerationStream, Status> {
        let service = self.service.get().ok_or_else(|| Status::unavailable("the orchestrator is still starting"))?;
        let req = to_request(request)?;
        service.submit(req).map_err(|e| status_from_service(&e))
    }
}

/// The one mapping of generation-service errors to gRPC status codes.
pub fn status_from_service(e: &ServiceError) -> Status {
    match e {
        ServiceError::Invalid(m) => Status::invalid_argument(m.clone()),
        ServiceError::ContextLength(m) => Status::out_of_range(m.clone()),
        ServiceError::Busy { .. } => {
            let mut status = Status::resource_exhausted(e.to_string());
            if let Some(s) = e.retry_after_s()
                && let Ok(v) = s.to_string().parse()
            {
                // The HTTP header's name and meaning, as gRPC metadata.
                status.metadata_mut().insert("retry-after", v);
            }
            status
        }
        ServiceError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        ServiceError::Unavailable(m) => Status::unavailable(m.clone()),
        ServiceError::Internal(m) => Status::internal(m.clone()),
    }
}

/// A wire request as the generation service takes it; field errors name the field.
pub fn to_request(r: pb::GenerateRequest) -> Result<GenerationRequest, Status> {
    let mode = match pb::Mode::try_from(r.mode) {
        Ok(pb::Mode::Unspecified) => None,
        Ok(pb::Mode::Ar) => Some(Mode::Ar),
        Ok(pb::Mode::Hybrid) => Some(Mode::Hybrid),
        Ok(pb::Mode::Diffusion) => Some(Mode::Diffusion),
        Err(_) => return Err(invalid("mode", format!("must be MODE_AR, MODE_HYBRID or MODE_DIFFUSION, got {}", r.mode))),
    };
    let drafter = match r.drafter.as_str() {
        "" => None,
        "diffusion" => Some(DrafterKind::Diffusion),
        "ngram" => Some(DrafterKind::Ngram),
        "ar-model" => Some(DrafterKind::ArModel),
        other => return Err(invalid("drafter", format!("must be diffusion, ngram or ar-model, got {other:?}"))),
    };
    let prompt = match r.input {
        Some(pb::generate_request::Input::Prompt(p)) => Prompt::Text(p),
        Some(pb::generate_request::Input::Chat(c)) => Prompt::Chat(
            c.messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
        ),
        None => return Err(invalid("input", "is required: set `prompt` or `chat`")),
    };
    let sampling = match r.sampling {
        None => Sampling::default(),
        Some(s) => Sampling {
            temperature: (s.temperature != 0.0).then_some(f64::from(s.temperature)),
            top_p: (s.top_p != 0.0).then_some(f64::from(s.top_p)),
            top_k: (s.top_k != 0).then_some(u64::from(s.top_k)),
            seed: (s.seed != 0).then_some(s.seed),
        },
    };
    let mut req = GenerationRequest::new(prompt);
    req.max_tokens = (r.max_tokens != 0).then_some(r.max_tokens as usize);
    req.mode = mode;
    req.drafter = drafter;
    req.block_size = (r.block_size != 0).then_some(r.block_size as usize);
    req.stop = r.stop;
    req.sampling = sampling;
    req.validate().map_err(|e| status_from_service(&e))?;
    Ok(req)
}

fn finish_to_pb(r: FinishReason) -> pb::StopReason {
    match r {
        FinishReason::Eos => pb::StopReason::Eos,
        FinishReason::MaxTokens => pb::StopReason::MaxTokens,
        FinishReason::ContextFull => pb::StopReason::ContextFull,
        FinishReason::StopSequence => pb::StopReason::StopSequence,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl OrchestratorRpc for OrchestratorService {
    async fn generate(&self, request: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        let until = deadline(&request);
        let stream = self.submit(request.into_inner())?;
        // At the deadline the collect future (and with it the stream) is dropped: the generation stops.
        let collected = match until {
            Some(t) => tokio::time::timeout_at(t, stream.collect())
                .await
                .map_err(|_| Status::deadline_exceeded("the generation ran past the call's deadline"))?,
            None => stream.collect().await,
        };
        let c = collected.map_err(|e| status_from_service(&e))?;
        let mut response = pb::GenerateResponse {
            text: c.text,
            token_ids: c.tokens,
            stop_reason: 0,
            stats: Some(stats_to_pb(&c.finished.stats)),
        };
        response.set_stop_reason(finish_to_pb(c.finished.reason));
        Ok(Response::new(response))
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(&self, request: Request<pb::GenerateRequest>) -> Result<Response<EventStream>, Status> {
        let until = deadline(&request);
        let mut stream = self.submit(request.into_inner())?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let expired = async {
                match until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
            loop {
                let event = tokio::select! {
                    e = stream.next_event() => e,
                    () = &mut expired => {
                        let _ = tx.send(Err(Status::deadline_exceeded("the generation ran past the call's deadline"))).await;
                        break;
                    }
                    // The client went away: dropping `stream` cancels the generation.
                    () = tx.closed() => break,
                };
                let msg = match event {
                    None => break,
                    Some(Event::Started { .. }) => continue,
                    Some(Event::Delta { text, tokens }) => Ok(pb::GenerateStreamResponse {
                        event: Some(pb::generate_stream_response::Event::Delta(pb::TextDelta { text, token_ids: tokens })),
                    }),
                    Some(Event::Finished(f)) => {
                        let mut done = pb::GenerateFinal { stop_reason: 0, stats: Some(stats_to_pb(&f.stats)) };
                        done.set_stop_reason(finish_to_pb(f.reason));
                        Ok(pb::GenerateStreamResponse { event: Some(pb::generate_stream_response::Event::Final(done)) })
                    }
                    Some(Event::Error(e)) => Err(status_from_service(&e)),
                };
                let last = !matches!(msg, Ok(pb::GenerateStreamResponse { event: Some(pb::generate_stream_response::Event::Delta(_)) }));
                if tx.send(msg).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::GenerateRequest {
        pb::GenerateRequest { input: Some(pb::generate_request::Input::Prompt("hi".into())), ..Default::default() }
    }

    #[test]
    fn a_request_without_input_names_the_field() {
        let s = to_request(pb::GenerateRequest::default()).expect_err("no input");
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with("`input`"), "{}", s.message());
    }

    #[test]
    fn bad_fields_answer_invalid_argument_naming_them() {
        let cases = [
            (pb::GenerateRequest { drafter: "gpt".into(), ..req() }, "`drafter`"),
            (pb::GenerateRequest { mode: 42, ..req() }, "`mode`"),
            (pb::GenerateRequest { block_size: 999, ..req() }, "`block_size`"),
            (pb::GenerateRequest { max_tokens: 1 << 20, ..req() }, "`max_tokens`"),
            (
                pb::GenerateRequest { sampling: Some(pb::SamplingParams { temperature: 3.0, ..Default::default() }), ..req() },
                "`temperature`",
            ),
        ];
        for (r, field) in cases {
            let s = to_request(r).expect_err(field);
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(s.message().contains(field), "{field}: {}", s.message());
        }
    }

    #[test]
    fn defaults_stay_unset_for_the_service_to_fill() {
        let r = to_request(req()).expect("valid");
        assert_eq!((r.max_tokens, r.mode, r.drafter, r.block_size), (None, None, None, None));
        let r = to_request(pb::GenerateRequest { mode: pb::Mode::Ar as i32, drafter: "ngram".into(), max_tokens: 5, ..req() })
            .expect("valid");
        assert_eq!((r.max_tokens, r.mode, r.drafter), (Some(5), Some(Mode::Ar), Some(DrafterKind::Ngram)));
    }

    #[test]
    fn a_busy_service_answers_resource_exhausted() {
        let e = ServiceError::Busy { running: 1, queued: 1, max_running: 1, max_queued: 1 };
        let status = status_from_service(&e);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    }
}
