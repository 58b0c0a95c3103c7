//! Duet over gRPC (`duet.v1`, see `proto/`): the drafter and verifier as services of their own, and
//! the engine's [`Drafter`](crate::engine::Drafter) and
//! [`VerifierSession`](crate::engine::VerifierSession) traits implemented over them, so one engine
//! runs in process (`duet serve`, `duet generate`) or spread over processes
//! (`duet orchestrator serve --drafter URL --verifier URL`).
//!
//! - [`drafter_service`] / [`drafter_client`]: `duet.v1.Drafter` and [`RemoteDrafter`]; a session
//!   keeps its context on the service, each call carries only new tokens and features.
//! - [`verifier_service`] / [`verifier_client`]: `duet.v1.Verifier` and [`RemoteVerifierSession`];
//!   sessions spread over replicas and stay on theirs; [`measure_costs`] is the verifier's cost
//!   curve measured on the server, for the cost-aware draft length of a remote orchestrator.
//! - [`orchestrator_service`]: `duet.v1.Orchestrator` over the generation service
//!   ([`crate::service`]); [`remote_backend`] is that service's backend over the remote drafter
//!   and verifiers (`duet orchestrator serve`).
//! - [`hops`]: what the network hops cost per round, split against in process (`duet bench --hops`).
//! - [`server`]: health, reflection, graceful shutdown, shared by every server.
//! - [`convert`]: the wire types and the one mapping of errors to status codes.
//!
//! The engine is synchronous; the remote implementations block on the tokio runtime, so the engine
//! runs on dedicated threads, never on tokio workers.

pub mod convert;
mod decode_errors;
pub mod drafter_client;
pub mod drafter_factory;
pub mod drafter_service;
pub mod hops;
mod hops_table;
pub mod measure_costs;
pub mod orchestrator_service;
pub mod remote_backend;
pub mod server;
pub mod verifier_client;
pub mod verifier_service;

pub use drafter_client::{RemoteDrafter, RemoteDrafterService};
pub use drafter_factory::ModelDrafters;
pub use drafter_service::{DrafterFactory, DrafterService, DrafterServiceConfig, SessionDrafter};
pub use orchestrator_service::OrchestratorService;
pub use remote_backend::RemoteBackend;
pub use server::{GrpcServer, Health, shutdown_signal};
pub use verifier_client::{RemoteVerifierSession, RemoteVerifiers};
pub use verifier_service::{VerifierService, VerifierServiceConfig};
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod validation_tests;
