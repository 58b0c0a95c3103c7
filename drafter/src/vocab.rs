//! The map between drafter ids and verifier ids.
//!
//! Every id that enters or leaves the public API is a verifier id (Qwen2.5: 151,936 slots). A
//! drafter may predict over a reduced vocabulary — the N most frequent verifier tokens — which
//! shrinks its embedding and, above all, its output layer, the largest matrix of a small model.
//! Verifier ids outside the reduced vocabulary enter as the UNK drafter id; drafter ids without a
//! verifier id (`[MASK]`, UNK, padding rows) are never drafted. A full-vocabulary drafter uses the
//! identity map.

use crate::config::DrafterConfig;
use crate::error::VocabError;

/// Marks a drafter id with no verifier token in a map (`[MASK]`, UNK, padding).
pub const NO_TOKEN: u32 = u32::MAX;

/// The drafter-id ↔ verifier-id map of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    draft_to_verifier: Vec<u32>,
    verifier_to_draft: Vec<u32>,
    reduced: bool,
    mask_id: u32,
    unk_id: Option<u32>,
    verifier_vocab_size: usize,
    blocked: Vec<u32>,
}

impl Vocab {
    /// The identity map of a full-vocabulary drafter: drafter id = verifier id. Drafter ids at or
    /// above the verifier's size (padding rows, as in Dream's 152,064) and the `[MASK]` id are
    /// never drafted.
    pub fn identity(config: &DrafterConfig) -> Result<Self, VocabError> {
        let verifier_vocab_size = config.verifier_vocab_size();
        let map = (0..config.vocab_size as u32)
            .map(|id| {
                let special = id == config.mask_token_id || Some(id) == config.unk_token_id;
                if special || id as usize >= verifier_vocab_size { NO_TOKEN } else { id }
            })
            .collect();
        Self::build(config, map, false)
    }

    /// A reduced vocabulary: `draft_to_verifier[d]` is the verifier id of drafter id `d`, or
    /// [`NO_TOKEN`]. It must have one entry per drafter id, no verifier id twice, and
    /// [`NO_TOKEN`] at the `[MASK]` and UNK ids.
    pub fn reduced(config: &DrafterConfig, draft_to_verifier: Vec<u32>) -> Result<Self, VocabError> {
        if draft_to_verifier.len() != config.vocab_size {
            return Err(VocabError::BadMap(format!(
                "has {} entries but the drafter vocabulary (vocab_size) has {}",
                draft_to_verifier.len(),
                config.vocab_size
            )));
        }
        for (name, id) in [("mask_token_id", Some(config.mask_token_id)), ("unk_token_id", config.unk_token_id)] {
            if let Some(id) = id
                && draft_to_verifier[id as usize] != NO_TOKEN
            {
                return Err(VocabError::BadMap(format!(
                    "{name} {id} maps to verifier token {}; special drafter ids must map to {NO_TOKEN}",
                    draft_to_verifier[id as usize]
                )));
            }
        }
        Self::build(config, draft_to_verifier, true)
    }

    /// The map of a reduced vocabulary made of `frequent` verifier ids (most frequent first):
    /// drafter ids `0..N` are those tokens, `N` is `[MASK]` and `N + 1` is UNK, matching
    /// [`DrafterConfig::proposed`] with `reduced_vocab = N`.
    pub fn reduced_map_from_frequent(frequent: &[u32]) -> Vec<u32> {
        let mut map = frequent.to_vec();
        map.extend([NO_TOKEN, NO_TOKEN]);
        map
    }

    fn build(config: &DrafterConfig, draft_to_verifier: Vec<u32>, reduced: bool) -> Result<Self, VocabError> {
        let verifier_vocab_size = config.verifier_vocab_size();
        let unk = config.unk_token_id.unwrap_or(NO_TOKEN);
        let mut verifier_to_draft = vec![unk; verifier_vocab_size];
        let mut seen = vec![false; verifier_vocab_size];
        let mut blocked = Vec::new();
        for (draft_id, &verifier_id) in draft_to_verifier.iter().enumerate() {
            if verifier_id == NO_TOKEN {
                blocked.push(draft_id as u32);
                continue;
            }
            let slot = verifier_id as usize;
            if slot >= verifier_vocab_size {
                return Err(VocabError::BadMap(format!(
                    "drafter id {draft_id} maps to verifier id {verifier_id}, outside the verifier vocabulary \
                     of {verifier_vocab_size} ids (verifier_vocab_size)"
                )));
            }
            if std::mem::replace(&mut seen[slot], true) {
                return Err(VocabError::BadMap(format!("verifier id {verifier_id} appears twice")));
            }
            verifier_to_draft[slot] = draft_id as u32;
        }
        if blocked.len() == draft_to_verifier.len() {
            return Err(VocabError::BadMap("no drafter id maps to a verifier token".into()));
        }
        Ok(Self {
            draft_to_verifier,
            verifier_to_draft,
            reduced,
            mask_id: config.mask_token_id,
            unk_id: config.unk_token_id,
            verifier_vocab_size,
            blocked,
        })
    }

    /// The drafter id of a verifier token: itself for a full vocabulary, UNK outside a reduced one.
    pub fn to_drafter(&self, verifier_id: u32) -> Result<u32, VocabError> {
        match self.verifier_to_draft.get(verifier_id as usize) {
            None => {
                Err(VocabError::OutOfRange { id: verifier_id, verifier_vocab_size: self.verifier_vocab_size })
            }
            Some(&NO_TOKEN) => Err(VocabError::NotInVocabulary { id: verifier_id }),
            Some(&id) => Ok(id),
        }
    }

    /// The verifier id of a drafter id, if it stands for a verifier token.
    pub fn to_verifier(&self, drafter_id: u32) -> Option<u32> {
        self.draft_to_verifier.get(drafter_id as usize).copied().filter(|&id| id != NO_TOKEN)
    }

    /// Whether the drafter can draft this verifier token (it has its own drafter id).
    pub fn can_draft(&self, verifier_id: u32) -> bool {
        self.to_drafter(verifier_id).is_ok_and(|id| self.to_verifier(id) == Some(verifier_id))
    }

    /// Drafter ids that are never drafted (no verifier token), sorted.
    pub fn blocked_ids(&self) -> &[u32] {
        &self.blocked
    }

    /// The drafter-id → verifier-id map ([`NO_TOKEN`] for special ids).
    pub fn draft_to_verifier(&self) -> &[u32] {
        &self.draft_to_verifier
    }

    /// Whether this is a reduced vocabulary (stored in the checkpoint) rather than the identity.
    pub fn is_reduced(&self) -> bool {
        self.reduced
    }

    /// Number of drafter ids.
    pub fn len(&self) -> usize {
        self.draft_to_verifier.len()
    }

    /// Whether the vocabulary is empty (never true for a built vocabulary).
    pub fn is_empty(&self) -> bool {
        self.draft_to_verifier.is_empty()
    }

    /// The drafter's `[MASK]` id.
    pub fn mask_id(&self) -> u32 {
        self.mask_id
    }

    /// The drafter's UNK id, if it has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// The size of the verifier vocabulary this map was made for.
    pub fn verifier_vocab_size(&self) -> usize {
        self.verifier_vocab_size
    }

    /// Checks that this drafter can serve a verifier whose vocabulary has `verifier_vocab_size`
    /// slots (llama.cpp's `n_vocab`): the sizes agree and every mapped id is in range. Run it at
    /// start-up so a mismatched pair is refused before any draft is made.
    pub fn check_verifier(&self, verifier_vocab_size: usize) -> Result<(), VocabError> {
        let out_of_range = self.draft_to_verifier.iter().find(|&&id| id != NO_TOKEN && id as usize >= verifier_vocab_size);
        if self.verifier_vocab_size != verifier_vocab_size || out_of_range.is_some() {
            return Err(VocabError::Mismatch {
                drafter: self.describe(),
                verifier: format!("{verifier_vocab_size} token ids"),
            });
        }
        Ok(())
    }

    /// One line for logs and errors.
    pub fn describe(&self) -> String {
        let kind = if self.reduced { "reduced" } else { "full" };
        format!(
            "{kind}, {} drafter ids ({} draftable) made for a verifier of {} token ids",
            self.len(),
            self.len() - self.blocked.len(),
            self.verifier_vocab_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vocab_size: usize, verifier: usize) -> DrafterConfig {
        let mut c = DrafterConfig::proposed_standalone(vocab_size - 2);
        c.verifier_vocab_size = Some(verifier);
        c
    }

    #[test]
    fn reduced_vocabulary_maps_both_ways_and_unknowns_become_unk() {
        let c = config(5, 100);
        let vocab = Vocab::reduced(&c, Vocab::reduced_map_from_frequent(&[42, 7, 99])).expect("valid map");
        assert_eq!(vocab.to_drafter(7), Ok(1));
        assert_eq!(vocab.to_verifier(2), Some(99));
        assert_eq!(vocab.to_drafter(8), Ok(4), "outside the reduced vocabulary: UNK");
        assert_eq!(vocab.to_verifier(3), None, "[MASK] has no verifier token");
        assert!(vocab.can_draft(42) && !vocab.can_draft(8));
        assert_eq!(vocab.blocked_ids(), &[3, 4]);
        assert_eq!(vocab.to_drafter(100), Err(VocabError::OutOfRange { id: 100, verifier_vocab_size: 100 }));
    }

    #[test]
    fn malformed_maps_are_refused() {
        let c = config(5, 100);
        assert!(Vocab::reduced(&c, vec![1, 2, 3, NO_TOKEN, NO_TOKEN, 5]).is_err(), "wrong length");
        assert!(Vocab::reduced(&c, vec![1, 1, 3, NO_TOKEN, NO_TOKEN]).is_err(), "duplicate");
        assert!(Vocab::reduced(&c, vec![1, 2, 300, NO_TOKEN, NO_TOKEN]).is_err(), "out of range");
        assert!(Vocab::reduced(&c, vec![1, 2, 3, 4, NO_TOKEN]).is_err(), "mask mapped");
    }

    #[test]
    fn identity_blocks_padding_rows_and_the_mask() {
        let mut c = config(12, 10);
        c.unk_token_id = None;
        c.mask_token_id = 5;
        let vocab = Vocab::identity(&c).expect("valid");
        assert_eq!(vocab.blocked_ids(), &[5, 10, 11]);
        assert_eq!(vocab.to_drafter(9), Ok(9));
        assert_eq!(vocab.to_verifier(9), Some(9));
    }

    #[test]
    fn a_mismatched_verifier_is_refused_naming_both_vocabularies() {
        let vocab = Vocab::reduced(&config(5, 151_936), vec![1, 2, 3, NO_TOKEN, NO_TOKEN]).expect("valid");
        vocab.check_verifier(151_936).expect("same vocabulary");
        let err = vocab.check_verifier(49_152).expect_err("another tokenizer").to_string();
        assert!(err.contains("151936") && err.contains("49152") && err.contains("reduced"), "{err}");
    }
}
