//! Duet's orchestrator: the speculative engine (propose → verify → accept → re-mask), the drafters it
//! can use, and the `duet` command line.
//!
//! The engine ([`engine::generate`]) runs rounds over a [`engine::Drafter`] and a
//! [`engine::VerifierSession`]; greedy output is token-identical to verifier-only decoding because
//! every emitted token is the verifier's own greedy choice and the verifier computes a token inside a
//! batch exactly as it computes it alone (see `duet_verifier::batch_invariance`).

// The latency-comparison harness (`duet bench`) keeps its sources with the other benchmark code.
#[path = "../../benches/harness/mod.rs"]
pub mod bench;
pub mod cli;
pub mod costs;
pub mod drafters;
pub mod engine;
pub mod http;
pub mod grpc;
pub mod service;
pub mod text;
pub mod training;
pub mod suite;

#[cfg(test)]
mod props;
