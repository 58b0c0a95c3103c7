//! The decoding strategies `duet bench` compares, and how each maps onto the engine and onto the
//! server's request fields.

use serde::Serialize;

use crate::drafters::DrafterKind;
use crate::engine::Mode;

/// One decoding strategy of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchMode {
    /// The verifier alone, one token per decode: the reference for speedups and outputs.
    Ar,
    /// Speculative decoding with the block-diffusion drafter (`--drafter-checkpoint`).
    HybridDiffusion,
    /// Speculative decoding with n-gram prompt lookup.
    HybridNgram,
    /// Speculative decoding with a small AR model drafting (`--drafter-model`; llama.cpp-style).
    HybridArModel,
    /// The diffusion drafter alone, unverified: fast and lossy.
    Diffusion,
}

impl BenchMode {
    /// Every mode, in the order a prompt runs them.
    pub const ALL: [BenchMode; 5] =
        [BenchMode::Ar, BenchMode::HybridDiffusion, BenchMode::HybridNgram, BenchMode::HybridArModel, BenchMode::Diffusion];

    /// The name on the command line and in reports.
    pub fn label(self) -> &'static str {
        match self {
            BenchMode::Ar => "ar",
            BenchMode::HybridDiffusion => "hybrid-diffusion",
            BenchMode::HybridNgram => "hybrid-ngram",
            BenchMode::HybridArModel => "hybrid-ar-model",
            BenchMode::Diffusion => "diffusion",
        }
    }

    /// Whether greedy output must equal `ar` token for token (every mode the verifier checks).
    pub fn is_lossless(self) -> bool {
        self != BenchMode::Diffusion
    }

    /// The engine mode it runs in.
    pub fn engine_mode(self) -> Mode {
        match self {
            BenchMode::Ar => Mode::Ar,
            BenchMode::Diffusion => Mode::Diffusion,
            _ => Mode::Hybrid,
        }
    }

    /// The drafter it uses, if any.
    pub fn drafter(self) -> Option<DrafterKind> {
        match self {
            BenchMode::Ar => None,
            BenchMode::HybridDiffusion | BenchMode::Diffusion => Some(DrafterKind::Diffusion),
            BenchMode::HybridNgram => Some(DrafterKind::Ngram),
            BenchMode::HybridArModel => Some(DrafterKind::ArModel),
        }
    }

    /// The `mode` and `drafter` fields of a request to `duet serve`.
    pub fn server_fields(self) -> (&'static str, Option<&'static str>) {
        match self {
            BenchMode::Ar => ("ar", None),
            BenchMode::HybridDiffusion => ("hybrid", Some("diffusion")),
            BenchMode::HybridNgram => ("hybrid", Some("ngram")),
            BenchMode::HybridArModel => ("hybrid", Some("ar-model")),
            BenchMode::Diffusion => ("diffusion", None),
        }
    }
}

/// Where a generation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// In this process, on the models the harness loaded.
    InProcess,
    /// Through `duet serve`'s OpenAI-compatible HTTP API (`--server`).
    Server,
}

impl Transport {
    /// The name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Transport::InProcess => "in-process",
            Transport::Server => "server",
        }
    }
}
