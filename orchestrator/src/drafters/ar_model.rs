//! A small autoregressive model as drafter (classic speculative decoding, as in llama.cpp's
//! `--model-draft`): it drafts a block one greedy step at a time on its own llama.cpp session, reusing
//! its KV cache across rounds up to the first token the verifier changed.

use duet_verifier::{ModelInfo, Session, TokenId, Verifier, VerifierError};

use crate::engine::{Draft, DraftError, DraftRequest, Drafter};

/// Drafts with a small model of the verifier's vocabulary.
#[derive(Debug)]
pub struct ArModelDrafter {
    session: Session,
    /// Stop the block early when the drafting model's confidence falls below this.
    min_prob: f32,
}

impl ArModelDrafter {
    /// Opens a drafting session on `model` after checking that it shares the verifier's vocabulary.
    pub fn new(model: &Verifier, verifier: &ModelInfo, min_prob: f32) -> Result<Self, VerifierError> {
        verifier.check_same_vocabulary(model.info())?;
        Ok(Self { session: model.open_session()?, min_prob })
    }

    fn draft(&mut self, req: &DraftRequest<'_>) -> Result<Draft, VerifierError> {
        let mut draft = Draft::default();
        if req.max_len == 0 || req.context.len() + req.max_len >= self.session.verifier().info().ctx_size {
            return Ok(draft);
        }
        let model = self.session.verifier().clone();
        let is_eog = |t: TokenId| model.info().is_eog(t);
        let mut choice = self.session.prefill(req.context)?.next;
        loop {
            draft.tokens.push(choice.token);
            draft.probs.push(choice.prob);
            if draft.tokens.len() >= req.max_len || is_eog(choice.token) {
                break;
            }
            choice = self.session.step()?.next;
            if choice.prob < self.min_prob {
                break;
            }
        }
        Ok(draft)
    }
}

impl Drafter for ArModelDrafter {
    fn name(&self) -> &str {
        "ar-model"
    }

    fn propose(&mut self, req: &DraftRequest<'_>) -> Result<Draft, DraftError> {
        self.draft(req).map_err(|e| DraftError { drafter: "ar-model".into(), reason: e.to_string() })
    }
}
