//! The drafters a `duet drafter serve` process offers: n-gram prompt lookup always (it needs no
//! model), plus the block-diffusion drafter and the small AR model when they are loaded.

use std::sync::Arc;

use duet_drafter::{DiffusionModel, SamplerConfig};
use duet_proto::v1 as pb;
use duet_verifier::Verifier;

use super::drafter_service::{DrafterFactory, SessionDrafter};
use crate::drafters::{ArModelDrafter, DiffusionDrafter, DrafterKind, HintPolicy, NgramDrafter};
use crate::engine::DraftError;

/// The block-diffusion drafter and how it denoises.
#[derive(Debug, Clone)]
pub struct DiffusionSetup {
    /// The loaded checkpoint.
    pub model: Arc<DiffusionModel>,
    /// Denoising settings.
    pub sampler: SamplerConfig,
    /// What it is told about the previous block.
    pub hints: HintPolicy,
    /// Where it came from, for `Info`.
    pub description: String,
}

/// Loaded drafter models; n-gram lookup is always there.
#[derive(Debug)]
pub struct ModelDrafters {
    /// The diffusion drafter, if loaded.
    pub diffusion: Option<DiffusionSetup>,
    /// The small AR drafting model, if loaded.
    pub ar_model: Option<Verifier>,
    /// The drafter of requests that name none.
    pub default: DrafterKind,
}

/// The name of a drafter kind on the wire (as `--drafter` spells it).
pub fn kind_name(kind: DrafterKind) -> &'static str {
    match kind {
        DrafterKind::Diffusion => "diffusion",
        DrafterKind::Ngram => "ngram",
        DrafterKind::ArModel => "ar-model",
    }
}

impl DrafterFactory for ModelDrafters {
    fn drafters(&self) -> Vec<pb::DrafterDescription> {
        let mut out = vec![pb::DrafterDescription {
            name: kind_name(DrafterKind::Ngram).into(),
            feature_dim: 0,
            verifier_vocab_size: 0,
            description: "n-gram prompt lookup".into(),
        }];
        if let Some(d) = &self.diffusion {
            out.push(pb::DrafterDescription {
                name: kind_name(DrafterKind::Diffusion).into(),
                feature_dim: d.model.feature_dim().unwrap_or(0) as u32,
                verifier_vocab_size: d.model.vocab().verifier_vocab_size() as u32,
                description: d.description.clone(),
            });
        }
        if let Some(m) = &self.ar_model {
            out.push(pb::DrafterDescription {
                name: kind_name(DrafterKind::ArModel).into(),
                feature_dim: 0,
                verifier_vocab_size: m.info().n_vocab as u32,
                description: format!("{} ({})", m.info().description, m.info().path.display()),
            });
        }
        out
    }

    fn default_drafter(&self) -> String {
        kind_name(self.default).into()
    }

    fn open(&self, name: &str) -> Result<SessionDrafter, DraftError> {
        let missing = || DraftError::new(name, "not loaded on this drafter service");
        match name {
            "ngram" => Ok(SessionDrafter::Engine(Box::new(NgramDrafter::default()))),
            "diffusion" => {
                let d = self.diffusion.as_ref().ok_or_else(missing)?;
                let drafter = DiffusionDrafter::new(d.model.clone(), d.sampler.clone(), d.hints)?;
                Ok(SessionDrafter::Diffusion(Box::new(drafter)))
            }
            "ar-model" => {
                let m = self.ar_model.as_ref().ok_or_else(missing)?;
                // The pairing with the verifier's vocabulary is checked by the orchestrator
                // (`verifier_vocab_size`); here the model is paired with itself.
                let d = ArModelDrafter::new(m, m.info(), 0.0)
                    .map_err(|e| DraftError::new(name, e.to_string()))?;
                Ok(SessionDrafter::Engine(Box::new(d)))
            }
            _ => Err(missing()),
        }
    }
}
