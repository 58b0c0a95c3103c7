//! A request message that cannot be decoded (invalid UTF-8 in a `string` field, truncated or garbled
//! bytes) is the client's fault, but tonic-prost answers it with INTERNAL. This wrapper, put around
//! every Duet service by [`super::GrpcServer::add_service`], turns that answer into INVALID_ARGUMENT
//! with the decoder's message (which names the message and field). Only servers use it: a client
//! that cannot decode a reply still sees INTERNAL.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;
use tonic::{Code, Status};

/// What prost's `DecodeError` messages start with.
const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// A service whose undecodable requests answer INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct DecodeErrorsAreInvalid<S>(pub S);

impl<S: NamedService> NamedService for DecodeErrorsAreInvalid<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<Request<Body>> for DecodeErrorsAreInvalid<S>
where
    S: tonic::codegen::Service<Request<Body>, Error = Infallible, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // tonic keeps the status of an error answered before the handler ran in the extensions.
            let decode_error = response
                .extensions()
                .get::<Status>()
                .filter(|s| s.code() == Code::Internal && s.message().starts_with(DECODE_ERROR))
                .map(|s| s.message().to_owned());
            Ok(match decode_error {
                Some(message) => Status::invalid_argument(format!("the request message is malformed: {message}")).into_http(),
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;
    use crate::grpc::orchestrator_service::OrchestratorService;

    /// A `duet.v1.Orchestrator/Generate` call whose body is `message`, framed as gRPC.
    fn generate_call(message: &[u8]) -> Request<Body> {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        Request::builder()
            .method("POST")
            .uri("/duet.v1.Orchestrator/Generate")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::new(axum::body::Body::from(frame)))
            .expect("request")
    }

    async fn grpc_status(service: impl tonic::codegen::Service<Request<Body>, Error = Infallible, Response = Response<Body>>, message: &[u8]) -> (String, String) {
        let response = service.oneshot(generate_call(message)).await.expect("infallible");
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (header("grpc-status"), header("grpc-message"))
    }

    #[tokio::test]
    async fn invalid_utf8_in_a_string_field_is_invalid_argument_not_internal() {
        // Field 1 (`prompt`, a string) holding the bytes ff fe.
        let message = [0x0a, 0x02, 0xff, 0xfe];
        let (status, _) = grpc_status(OrchestratorService::new().into_server(), &message).await;
        assert_eq!(status, "13", "tonic alone answers INTERNAL");
        let (status, text) = grpc_status(DecodeErrorsAreInvalid(OrchestratorService::new().into_server()), &message).await;
        assert_eq!(status, "3", "{text}");
        assert!(text.contains("malformed") && text.contains("UTF-8"), "{text}");
        // Truncated bytes: a length past the end.
        let (status, _) = grpc_status(DecodeErrorsAreInvalid(OrchestratorService::new().into_server()), &[0x0a, 0x09, b'x']).await;
        assert_eq!(status, "3");
        // A well-formed request still reaches the service (which is not ready yet).
        let (status, _) = grpc_status(DecodeErrorsAreInvalid(OrchestratorService::new().into_server()), &[0x0a, 0x01, b'x']).await;
        assert_eq!(status, "14");
    }
}
