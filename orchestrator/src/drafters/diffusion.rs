//! The block-diffusion drafter (`duet_drafter`) behind the engine's [`Drafter`] trait.
//!
//! The adapter keeps the drafter's per-session context cache in step with the engine's context:
//! each round it cuts the cache back to the longest prefix it shares with the new context (the
//! verifier may have rejected part of the last block), appends the new tokens with the verifier's
//! hidden states for a target-conditioned (DFlash-style) model, and drafts a fully masked block —
//! or, with [`HintPolicy::RejectedTail`], a block whose first positions hold the last round's
//! rejected tail as given tokens (the drafter re-denoises only the masked rest).

use std::path::Path;
use std::sync::Arc;

use duet_drafter::{DiffusionModel, DraftBlock, DraftCache, SamplerConfig};
use duet_verifier::TokenId;

use crate::engine::{Draft, DraftError, DraftRequest, Drafter};

/// What the drafter is told about the previous round's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HintPolicy {
    /// Every position of the new block starts masked.
    #[default]
    None,
    /// The tokens drafted after the rejected one start as given positions of the new block.
    RejectedTail,
}

/// Drafts with a block-diffusion model.
#[derive(Debug)]
pub struct DiffusionDrafter {
    model: Arc<DiffusionModel>,
    cache: DraftCache,
    /// The context in the cache, verifier ids.
    context: Vec<TokenId>,
    sampler: SamplerConfig,
    hints: HintPolicy,
    round: u64,
}

/// Loads a drafter checkpoint folder (`config.json` + `model.safetensors`).
pub fn load_model(dir: &Path) -> Result<Arc<DiffusionModel>, duet_drafter::DrafterError> {
    DiffusionModel::load(dir).map(Arc::new)
}

impl DiffusionDrafter {
    /// A drafting session on `model`.
    pub fn new(model: Arc<DiffusionModel>, sampler: SamplerConfig, hints: HintPolicy) -> Result<Self, DraftError> {
        let cache = model.new_cache().map_err(err)?;
        Ok(Self { model, cache, context: Vec::new(), sampler, hints, round: 0 })
    }

    /// Brings the cache to `req.context` (and the features that came with it).
    fn sync(&mut self, req: &DraftRequest<'_>) -> Result<(), DraftError> {
        let common = self.context.iter().zip(req.context).take_while(|(a, b)| a == b).count();
        self.cache.truncate(common);
        self.context.truncate(common);
        let features = match (self.model.feature_dim(), req.features) {
            (Some(dim), Some(f)) if f.dim == dim => {
                let from = self.cache.cached_len().min(f.rows());
                Some(&f.data[from * dim..])
            }
            (Some(dim), Some(f)) => {
                return Err(DraftError::new(
                    "diffusion",
                    format!(
                        "the drafter expects verifier features of width {dim}, the verifier gives {}; \
                         use the verifier this drafter was trained for",
                        f.dim
                    ),
                ));
            }
            (Some(_), None) => {
                return Err(DraftError::new("diffusion", "this drafter is conditioned on verifier features but none arrive"));
            }
            (None, _) => None,
        };
        // Without features (a standalone model) the new tokens are cached by the drafting pass
        // itself, together with the block: one pass over the drafter's layers per round, not two.
        match features {
            Some(_) => self.cache.extend(&self.model, &req.context[common..], features),
            None => self.cache.extend_deferred(&self.model, &req.context[common..]),
        }
        .map_err(err)?;
        self.context.extend_from_slice(&req.context[common..]);
        Ok(())
    }

    fn initial_block(&self, req: &DraftRequest<'_>) -> Vec<Option<TokenId>> {
        let mut init = vec![None; req.max_len];
        if let (HintPolicy::RejectedTail, Some(prev)) = (self.hints, req.previous) {
            for (slot, &t) in init.iter_mut().zip(prev.rejected_tail()) {
                if self.model.vocab().can_draft(t) {
                    *slot = Some(t);
                }
            }
        }
        init
    }

    /// Drafts one block (also used by diffusion-only generation).
    pub fn draft_block(&mut self, req: &DraftRequest<'_>) -> Result<DraftBlock, DraftError> {
        self.sync(req)?;
        let init = self.initial_block(req);
        self.round += 1;
        let sampler = SamplerConfig {
            steps: self.sampler.steps.min(req.max_len).max(1),
            seed: self.sampler.seed.wrapping_add(self.round),
            ..self.sampler.clone()
        };
        self.model.draft(&mut self.cache, &init, &sampler).map_err(err)
    }
}

fn err(e: duet_drafter::DrafterError) -> DraftError {
    DraftError::new("diffusion", e.to_string())
}

impl Drafter for DiffusionDrafter {
    fn name(&self) -> &str {
        "diffusion"
    }

    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        if req.max_len == 0 {
            return Ok(Draft::default());
        }
        let block = self.draft_block(req)?;
        // No `dists`: when the verifier samples, the drafts are judged as point masses, which is
        // exact however they were drawn (the sampler's q would be exact only for one-pass drafts).
        Ok(Draft { tokens: block.tokens, probs: block.probs, dists: Vec::new(), confidences: block.confidences })
    }
}
