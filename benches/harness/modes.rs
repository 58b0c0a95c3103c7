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

/// One contender of the comparison: one of Duet's modes, or another engine's server (`--peer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    /// A Duet mode.
    Duet(BenchMode),
    /// A peer, by the name `--peer` gave it (made `'static` once per run, so that a contender is as
    /// cheap to copy as a mode).
    Peer(&'static str),
}

impl Contender {
    /// The name in reports: the mode's, or the peer's.
    pub fn label(self) -> &'static str {
        match self {
            Contender::Duet(m) => m.label(),
            Contender::Peer(name) => name,
        }
    }

    /// Whether greedy output must equal `ar`'s: Duet's verified modes only. A peer's outputs are
    /// compared and reported, never required to match (stock llama.cpp is not batch-invariant).
    pub fn is_lossless(self) -> bool {
        matches!(self, Contender::Duet(m) if m.is_lossless())
    }

    /// Whether this is a peer.
    pub fn is_peer(self) -> bool {
        matches!(self, Contender::Peer(_))
    }
}

impl From<BenchMode> for Contender {
    fn from(m: BenchMode) -> Self {
        Contender::Duet(m)
    }
}

impl PartialEq<BenchMode> for Contender {
    fn eq(&self, m: &BenchMode) -> bool {
        *self == Contender::Duet(*m)
    }
}

impl Serialize for Contender {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

/// Where a generation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// In this process, on the models the harness loaded.
    InProcess,
    /// Through an OpenAI-compatible HTTP API: `duet serve`'s (`--server`) or a peer's (`--peer`).
    Server,
}

impl Transport {
    /// The transport whose Duet rows are set beside the peers': in process when the run measured
    /// there, else through the server (a peer's own HTTP streaming costs well under a ms a token).
    pub fn beside_peers(in_process: bool) -> Self {
        if in_process { Transport::InProcess } else { Transport::Server }
    }

    /// The name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Transport::InProcess => "in-process",
            Transport::Server => "server",
        }
    }
}
