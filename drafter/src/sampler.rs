//! The denoising sampler: turns a block of `[MASK]`s (or a partly filled block) into a draft in
//! `steps` parallel passes.
//!
//! Each step runs the model once over the current block, picks a candidate token for every masked
//! position, and commits the most confident ones; the others stay masked for the next step. Two
//! schedules: LLaDA's low-confidence remasking, which commits an even share of the masked positions
//! per step (Nie et al. 2025), and Fast-dLLM's confidence threshold, which commits every position
//! whose confidence clears the threshold, at least one per step (Wu et al. 2025). The last step
//! commits whatever is left, so a block is always complete after `steps` passes; `steps = 1` is a
//! single parallel pass (DFlash). Positions given as filled are never changed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cache::DraftCache;
use crate::config::MAX_BLOCK_SIZE;
use crate::distribution::{Choice, Scratch, by_confidence, choose, even_share};
use crate::error::{DrafterError, Result};
use crate::model::DiffusionModel;

/// Largest classifier-free guidance scale accepted.
pub const MAX_GUIDANCE: f32 = 10.0;

/// Which masked positions a denoising step commits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Commit an even share of the initially masked positions per step, most confident first
    /// (LLaDA's low-confidence remasking).
    LowConfidence,
    /// Commit every masked position whose confidence is at least `threshold`, and at least the
    /// most confident one (Fast-dLLM); may finish in fewer than `steps` passes.
    Threshold {
        /// Confidence (model probability of the candidate) in (0, 1] needed to commit early.
        threshold: f32,
    },
}

/// How to draft a block.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Most denoising passes, 1 ..= the block length (capped at the number of masked positions).
    pub steps: usize,
    /// 0 for greedy; otherwise tokens are drawn from `softmax(logits / temperature)`, which is what
    /// lossless speculative sampling needs the drafter to report.
    pub temperature: f32,
    /// Which positions each pass commits.
    pub schedule: Schedule,
    /// Alternatives reported per drafted position (for tree drafting or diagnostics); 0 for none.
    pub top_k: usize,
    /// Seed of the draws at `temperature > 0`: the same seed, model, context and block give the
    /// same draft. Vary it per round to get independent drafts.
    pub seed: u64,
    /// Classifier-free guidance scale w (0 = off): each pass also runs the block with no context
    /// (what the model learned for a block at the start of a text) and drafts from
    /// `cond + w · (cond − uncond)`, sharpening what the context adds. For diffusion-only
    /// generation; a drafter for a verifier wants the plain conditional distribution.
    pub guidance: f32,
}

impl Default for SamplerConfig {
    /// One greedy pass, no alternatives.
    fn default() -> Self {
        Self { steps: 1, temperature: 0.0, schedule: Schedule::LowConfidence, top_k: 0, seed: 0, guidance: 0.0 }
    }
}

impl SamplerConfig {
    /// Checks the settings against a block of `block_len` positions.
    pub fn validate(&self, block_len: usize) -> Result<()> {
        fn bad(field: &'static str, reason: String) -> DrafterError {
            DrafterError::Sampler { field, reason }
        }
        if !(1..=MAX_BLOCK_SIZE).contains(&block_len) {
            return Err(bad("block", format!("length must be between 1 and {MAX_BLOCK_SIZE}, got {block_len}")));
        }
        if !(1..=block_len).contains(&self.steps) {
            return Err(bad("steps", format!("must be between 1 and the block length {block_len}, got {}", self.steps)));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad("temperature", format!("must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&self.guidance)) {
            return Err(bad("guidance", format!("must be between 0 and {MAX_GUIDANCE}, got {}", self.guidance)));
        }
        if let Schedule::Threshold { threshold } = self.schedule
            && !(threshold > 0.0 && threshold <= 1.0)
        {
            return Err(bad("threshold", format!("must be in (0, 1], got {threshold}")));
        }
        Ok(())
    }
}

/// A drafted block; every vector has one entry per block position.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DraftBlock {
    /// Verifier ids of the block.
    pub tokens: Vec<u32>,
    /// Probability with which each token was drawn, given the tokens committed before it: 1 for
    /// greedy drafts and for positions given as filled.
    pub probs: Vec<f32>,
    /// The drafter's own probability of each token when it was committed (1 for given positions):
    /// a signal for how far to trust the block.
    pub confidences: Vec<f32>,
    /// The most likely alternatives (verifier ids, model probabilities), best first, at the step
    /// each position was committed; empty for given positions.
    pub top: Vec<Vec<(u32, f32)>>,
    /// Model passes the draft took.
    pub forward_passes: usize,
}

impl DiffusionModel {
    /// Drafts the block that continues `cache`'s context. `init` gives the block length and any
    /// known positions (verifier ids; `None` = masked, e.g. the rejected tail of the last round
    /// re-masked). The cache's context is not changed.
    pub fn draft(&self, cache: &mut DraftCache, init: &[Option<u32>], sampler: &SamplerConfig) -> Result<DraftBlock> {
        sampler.validate(init.len())?;
        let mut block = self.block_ids(init)?;
        let mut masked: Vec<usize> = (0..init.len()).filter(|&i| init[i].is_none()).collect();
        let mut out = DraftBlock {
            tokens: init.iter().map(|t| t.unwrap_or(0)).collect(),
            probs: vec![1.0; init.len()],
            confidences: vec![1.0; init.len()],
            top: vec![Vec::new(); init.len()],
            forward_passes: 0,
        };
        let steps = sampler.steps.min(masked.len());
        let quotas = even_share(masked.len(), steps);
        let mut rng = StdRng::seed_from_u64(sampler.seed);
        let mut scratch = Scratch::default();
        // The unconditional branch of guidance: the same block with an empty context.
        let mut uncond = if sampler.guidance > 0.0 { Some(DraftCache::new(self)?) } else { None };
        for (step, quota) in quotas.into_iter().enumerate() {
            if masked.is_empty() {
                break;
            }
            let mut logits = self.forward_block(cache, &block, Some(&masked))?;
            if let Some(uncond) = uncond.as_mut() {
                let free = self.forward_block(uncond, &block, Some(&masked))?;
                let w = f64::from(sampler.guidance);
                logits = ((logits.clone() * (1.0 + w))? - (free * w)?)?;
                out.forward_passes += 1;
            }
            let logits = logits.to_vec2::<f32>()?;
            out.forward_passes += 1;
            let mut candidates: Vec<(usize, Choice)> = masked
                .iter()
                .enumerate()
                .map(|(row, &pos)| {
                    let u = if sampler.temperature > 0.0 { rng.random::<f64>() } else { 0.0 };
                    let row = &logits[row];
                    (pos, choose(row, self.vocab.blocked_ids(), sampler.temperature, u, sampler.top_k, &mut scratch))
                })
                .collect();
            by_confidence(&mut candidates);
            let last = step + 1 == steps;
            let take = match sampler.schedule {
                _ if last => candidates.len(),
                Schedule::LowConfidence => quota,
                Schedule::Threshold { threshold } => {
                    candidates.iter().take_while(|c| c.1.confidence >= threshold).count().max(1)
                }
            };
            for (pos, choice) in candidates.into_iter().take(take) {
                block[pos] = choice.token;
                out.tokens[pos] = self.verifier_id(choice.token)?;
                out.probs[pos] = choice.prob;
                out.confidences[pos] = choice.confidence;
                out.top[pos] = choice
                    .top
                    .iter()
                    .filter_map(|&(id, p)| self.vocab.to_verifier(id).map(|v| (v, p)))
                    .collect();
            }
            masked.retain(|&pos| block[pos] == self.vocab.mask_id());
        }
        Ok(out)
    }

    fn verifier_id(&self, drafter_id: u32) -> Result<u32> {
        // `choose` never returns a blocked id, and every unblocked id maps to a verifier id.
        self.vocab.to_verifier(drafter_id).ok_or_else(|| {
            DrafterError::Input(format!("drafter id {drafter_id} has no verifier token (internal invariant broken)"))
        })
    }
}
