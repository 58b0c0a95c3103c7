//! A small autoregressive model as drafter (classic speculative decoding, as in llama.cpp's
//! `--model-draft`): it drafts a block one greedy step at a time on its own llama.cpp session, reusing
//! its KV cache across rounds up to the first token the verifier changed. When the verifier samples,
//! the drafting model samples too — from its own top-[`DRAFT_TOP_K`], renormalised, with a seed of its
//! own per round — and reports that distribution, so speculative rejection sampling can use the
//! exact q of every draft.

use duet_verifier::{ModelInfo, SamplingParams, Session, TokenId, Verifier, VerifierError};

use crate::engine::{Draft, DraftError, DraftRequest, Drafter};

/// Most tokens in the distribution a sampling drafting model draws from and reports.
pub const DRAFT_TOP_K: usize = 32;

/// Drafts with a small model of the verifier's vocabulary.
#[derive(Debug)]
pub struct ArModelDrafter {
    session: Session,
    /// Stop the block early when the drafting model's confidence falls below this.
    min_prob: f32,
    /// The drafting model's sampling settings; `None` drafts greedily.
    sampling: Option<SamplingParams>,
    round: u64,
}

impl ArModelDrafter {
    /// Opens a drafting session on `model` after checking that it shares the verifier's vocabulary.
    pub fn new(model: &Verifier, verifier: &ModelInfo, min_prob: f32) -> Result<Self, VerifierError> {
        verifier.check_same_vocabulary(model.info())?;
        Ok(Self { session: model.open_session()?, min_prob, sampling: None, round: 0 })
    }

    /// Samples drafts when the verifier samples with `verifier`: same temperature and top-p, at most
    /// [`DRAFT_TOP_K`] candidates, a seed derived from the verifier's (drafts must not reuse the
    /// verifier's draws). Greedy settings keep greedy drafting.
    pub fn with_sampling(mut self, verifier: &SamplingParams) -> Self {
        self.sampling = (!verifier.is_greedy()).then(|| SamplingParams {
            top_k: if verifier.top_k == 0 { DRAFT_TOP_K } else { verifier.top_k.min(DRAFT_TOP_K) },
            ..*verifier
        });
        self
    }

    fn draft(&mut self, req: &DraftRequest<'_>) -> Result<Draft, VerifierError> {
        let mut draft = Draft::default();
        if req.max_len == 0 || req.context.len() + req.max_len >= self.session.verifier().info().ctx_size {
            return Ok(draft);
        }
        let model = self.session.verifier().clone();
        let is_eog = |t: TokenId| model.info().is_eog(t);
        if let Some(s) = self.sampling {
            // Fresh draws every round, independent of the verifier's.
            self.round += 1;
            self.session.set_sampling(s.with_derived_seed(self.round))?;
        }
        let mut verdict = self.session.prefill(req.context)?;
        loop {
            let choice = verdict.next;
            draft.tokens.push(choice.token);
            draft.probs.push(choice.prob);
            draft.confidences.push(choice.prob);
            draft.dists.push(std::mem::take(&mut verdict.next_dist));
            if draft.tokens.len() >= req.max_len || is_eog(choice.token) {
                break;
            }
            verdict = self.session.step()?;
            if verdict.next.prob < self.min_prob {
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
        self.draft(req).map_err(|e| DraftError::new("ar-model", e.to_string()))
    }
}
