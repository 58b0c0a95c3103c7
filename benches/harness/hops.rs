//! The network-hop phase of `duet bench` (`--hops N`): the first N prompts of the first suite run
//! in process and split over loopback gRPC (`duet_orchestrator::grpc::hops`), so the report says
//! what the hops of a distributed deployment add to a round. It runs after every other mode, so its
//! servers and threads never share the machine with their timings.
//!
//! Split and in-process outputs must be identical (same model, greedy); a difference is a lossless
//! failure like any other and fails the run after the report is written.

use anyhow::bail;
use serde::Serialize;

use super::modes::BenchMode;
use super::runner::{Models, PreparedPrompt};
use crate::grpc::drafter_factory::DiffusionSetup;
use crate::grpc::hops::{HopConfig, HopError, HopPrompt, HopRow, measure};

/// Prompts measured when `--hops` is not given.
pub const DEFAULT_PROMPTS: usize = 4;
/// Prompts measured with `--quick` when `--hops` is not given.
pub const QUICK_PROMPTS: usize = 2;

/// Why the hop phase has no table.
#[derive(Debug, Clone, Serialize)]
pub struct HopFailure {
    /// The split output differed from the in-process output (a lossless failure).
    pub mismatch: bool,
    /// What happened.
    pub message: String,
}

/// The phase's plan: the prompts and the set-up, built before the run so the progress bar knows
/// how many generations it adds.
#[derive(Debug)]
pub struct HopPlan {
    prompts: Vec<HopPrompt>,
    config: HopConfig,
}

impl HopPlan {
    /// The first `n` prompts of `first_suite`; hybrid-diffusion too when it is among `modes` (the
    /// drafter `checkpoint` served over gRPC as `duet drafter serve` would).
    pub fn new(n: usize, first_suite: &[PreparedPrompt], models: &Models, modes: &[BenchMode], block_size: usize, checkpoint: &str) -> Self {
        let prompts =
            first_suite.iter().take(n).map(|p| HopPrompt { tokens: p.tokens.clone(), max_tokens: p.max_tokens }).collect();
        let diffusion = models.diffusion.as_ref().filter(|_| modes.contains(&BenchMode::HybridDiffusion)).map(|m| DiffusionSetup {
            model: m.clone(),
            sampler: models.sampler.clone(),
            hints: models.hints,
            description: checkpoint.to_owned(),
        });
        Self { prompts, config: HopConfig { block_size, diffusion, features: models.features } }
    }

    /// Prompts measured.
    pub fn prompts(&self) -> usize {
        self.prompts.len()
    }

    /// Generations the phase runs: each prompt in each mode, in process and split.
    pub fn generations(&self) -> usize {
        self.prompts.len() * crate::grpc::hops::modes(&self.config).len() * 2
    }

    /// Runs the phase; `tick` is called after each generation with what ran. A failure is returned
    /// as data so the report is written before the run fails.
    pub fn run(&self, models: &Models, mut tick: impl FnMut(&str)) -> Result<Vec<HopRow>, HopFailure> {
        if self.prompts.is_empty() {
            return Ok(Vec::new());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| HopFailure { mismatch: false, message: format!("starting the runtime: {e}") })?;
        measure(&models.verifier, &self.prompts, &self.config, &rt, &mut tick).map_err(|e| HopFailure {
            mismatch: matches!(e, HopError::Mismatch { .. }),
            message: e.to_string(),
        })
    }
}

/// Fails the run when the hop phase failed: loudly, as `MISMATCH:` for a lossless failure.
pub fn verdict(failure: Option<&HopFailure>) -> anyhow::Result<()> {
    match failure {
        None => Ok(()),
        Some(f) if f.mismatch => {
            eprintln!("MISMATCH: network hops: {}", f.message);
            bail!("the network-hop phase's split output differs from in process: the lossless check failed ({})", f.message)
        }
        Some(f) => bail!("the network-hop phase failed (--hops 0 turns it off): {}", f.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_mismatch_fails_the_run_as_a_lossless_failure() {
        let f = HopFailure { mismatch: true, message: "prompt 1: split generation differs (hybrid-ngram)".into() };
        let e = verdict(Some(&f)).expect_err("a mismatch must fail the run");
        assert!(format!("{e}").contains("lossless check failed"), "{e}");
        let f = HopFailure { mismatch: false, message: "setting up the services: no port".into() };
        assert!(format!("{}", verdict(Some(&f)).expect_err("an error fails too")).contains("--hops 0"));
        assert!(verdict(None).is_ok());
    }
}
