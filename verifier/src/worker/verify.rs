//! The verification path of the verifier thread: a session's block (its pending token and the
//! draft) is checked, decoded in one llama.cpp call together with the blocks of other sessions that
//! arrived with it ([`crate::gather`]), judged (greedy prefix or speculative sampling), and the
//! rejected positions are removed from the cache. A lone block is a group of one.

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::{Command, REPORTED_SUPPORT_LIMIT, Worker};
use crate::greedy::{Choice, accept_prefix, choose};
use crate::handle::{BatchShare, Verdict};
use crate::sampling::{SamplingParams, SparseDist, process};
use crate::speculative::speculate;
use crate::{TokenId, VerifierError};

/// A verification taken from the channel, checked and with its block built.
struct Block {
    /// The session's id, and the llama.cpp sequence holding its cache.
    id: i32,
    slot: i32,
    /// Tokens in the session's cache before the block.
    len: usize,
    /// The pending token followed by the draft.
    tokens: Vec<TokenId>,
    q: Vec<SparseDist>,
    sampling: SamplingParams,
}

impl Worker<'_> {
    /// Serves verifications of distinct sessions with one decode call for all of their blocks.
    /// Each block's tokens are computed exactly as they would be alone (see [`crate::batch_invariance`]).
    pub(super) fn verify_group(&mut self, cmds: Vec<Command>) {
        let mut blocks = Vec::with_capacity(cmds.len());
        let mut replies = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            match cmd {
                Command::Verify { id, draft, q, sampling, reply } => match self.block(id, &draft, q, sampling) {
                    Ok(b) => {
                        blocks.push(b);
                        replies.push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                other => self.handle(other),
            }
        }
        if blocks.is_empty() {
            return;
        }
        // llama.cpp puts consecutive sequence ids into one micro-batch; the open sessions' slots are
        // kept consecutive (`Worker::close`).
        // With one KV stream per session it also takes the same number of tokens of every sequence
        // in a micro-batch: the rows past the shortest block's are evaluated in further passes (a
        // single draft beside three plain steps costs about one more plain step).
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        order.sort_by_key(|&i| blocks[i].slot);
        let parts: Vec<(i32, usize, &[TokenId])> =
            order.iter().map(|&i| (blocks[i].slot, blocks[i].len, blocks[i].tokens.as_slice())).collect();
        let decoded = self.decode_many(&parts);
        self.usage.verify_decodes += 1;
        self.usage.verify_blocks += blocks.len() as u64;
        match decoded {
            Ok(outputs) => {
                let mut verdicts: Vec<(usize, Result<Verdict, VerifierError>)> = Vec::with_capacity(blocks.len());
                for ((choices, features, row0), &i) in outputs.into_iter().zip(&order) {
                    verdicts.push((i, self.judge(&blocks[i], choices, features, row0)));
                }
                // Every session learns what the whole call cost and gave, not only its own part.
                let batch = BatchShare {
                    blocks: blocks.len(),
                    rows: blocks.iter().map(|b| b.tokens.len()).sum(),
                    gained: verdicts.iter().filter_map(|(_, v)| v.as_ref().ok()).map(|v| v.accepted + 1).sum(),
                };
                for (i, mut verdict) in verdicts {
                    if let Ok(v) = verdict.as_mut() {
                        v.batch = batch;
                    }
                    let _ = replies[i].send(verdict);
                }
            }
            Err(e) => {
                for (b, reply) in blocks.iter().zip(replies) {
                    let _ = self.remove_from(b.slot, b.len);
                    let _ = reply.send(Err(each_its_own(&e)));
                }
            }
        }
    }

    /// Decodes several sequences' tokens in one batch (they must fit in it together) with logits
    /// at every token. Returns, per part, the greedy choices, the hidden states (with features on)
    /// and the batch row of its first token.
    #[allow(clippy::type_complexity)]
    fn decode_many(&mut self, parts: &[(i32, usize, &[TokenId])]) -> Result<Vec<(Vec<Choice>, Vec<f32>, usize)>, VerifierError> {
        let total: usize = parts.iter().map(|p| p.2.len()).sum();
        debug_assert!(total <= self.config.batch_size as usize);
        let mut batch = LlamaBatch::new(total, 1);
        for &(slot, start, tokens) in parts {
            for (i, &t) in tokens.iter().enumerate() {
                batch
                    .add(LlamaToken(t as i32), (start + i) as i32, &[slot], true)
                    .map_err(|e| VerifierError::Backend { op: "fill batch", reason: e.to_string() })?;
            }
        }
        self.ctx.decode(&mut batch).map_err(|e| VerifierError::Backend { op: "decode", reason: e.to_string() })?;
        let mut out = Vec::with_capacity(parts.len());
        let mut row = 0;
        for &(_, _, tokens) in parts {
            let row0 = row;
            let mut choices = Vec::with_capacity(tokens.len());
            let mut features = Vec::new();
            for _ in tokens {
                choices.push(choose(self.ctx.get_logits_ith(row as i32)));
                if self.config.features {
                    features.extend_from_slice(self.hidden_state(row)?);
                }
                row += 1;
            }
            out.push((choices, features, row0));
        }
        Ok(out)
    }

    pub(super) fn pending(&mut self, id: i32) -> Result<(usize, TokenId), VerifierError> {
        let st = self.state(id)?;
        let pending = st
            .pending
            .ok_or_else(|| VerifierError::InvalidRequest(format!("session {id} has no prompt yet")))?;
        Ok((st.tokens.len(), pending))
    }

    /// Checks a verification request and builds its block: the pending token, then the draft.
    fn block(
        &mut self,
        id: i32,
        draft: &[TokenId],
        q: Vec<SparseDist>,
        sampling: SamplingParams,
    ) -> Result<Block, VerifierError> {
        let (len, pending) = self.pending(id)?;
        let slot = self.slot(id)?;
        if draft.len() + 1 > self.config.batch_size as usize {
            return Err(VerifierError::InvalidRequest(format!(
                "a draft block may hold at most {} tokens, got {}",
                self.config.batch_size - 1,
                draft.len()
            )));
        }
        self.check_tokens(draft)?;
        self.check_room("the draft block", len + 1 + draft.len())?;
        let mut tokens = Vec::with_capacity(draft.len() + 1);
        tokens.push(pending);
        tokens.extend_from_slice(draft);
        Ok(Block { id, slot, len, tokens, q, sampling })
    }

    /// Accepts a prefix of a decoded block (its logits are rows `row0..` of the last decode), trims
    /// the rejected positions from the cache and moves the session on.
    fn judge(
        &mut self,
        block: &Block,
        choices: Vec<Choice>,
        mut features: Vec<f32>,
        row0: usize,
    ) -> Result<Verdict, VerifierError> {
        let (len, sampling) = (block.len, &block.sampling);
        let draft = &block.tokens[1..];
        let (accepted, kept, next_dist) = if sampling.is_greedy() {
            let accepted = accept_prefix(draft, &choices);
            let mut kept = choices;
            kept.truncate(accepted + 1);
            (accepted, kept, Vec::new())
        } else {
            // Speculative sampling over the block's rows of this decode.
            let ctx = &self.ctx;
            let report = (1..=REPORTED_SUPPORT_LIMIT).contains(&sampling.top_k);
            // The last distribution judged is the one `next` came from.
            let mut last_p = Vec::new();
            let p = |i: usize| {
                let d = process(ctx.get_logits_ith((row0 + i) as i32), sampling);
                if report {
                    last_p.clone_from(&d);
                }
                d
            };
            let outcome = speculate(draft, &block.q, p, sampling.seed, len + 1);
            let kept: Vec<Choice> =
                outcome.tokens.iter().zip(&choices).map(|(&(token, prob), c)| Choice { token, prob, margin: c.margin }).collect();
            (outcome.accepted, kept, last_p)
        };
        let keep = len + 1 + accepted;
        self.remove_from(block.slot, keep)?;
        let next = kept[accepted];
        let st = self.state(block.id)?;
        st.tokens.extend_from_slice(&block.tokens[..1 + accepted]);
        st.pending = Some(next.token);
        let n_embd = self.model.n_embd().max(0) as usize;
        features.truncate((accepted + 1) * n_embd);
        Ok(Verdict { accepted, next, choices: kept, features, next_dist, batch: BatchShare::default() })
    }
}

/// A failed shared decode, for each block that was in it (errors are not `Clone`).
fn each_its_own(e: &VerifierError) -> VerifierError {
    match e {
        VerifierError::Backend { op, reason } => VerifierError::Backend { op, reason: reason.clone() },
        other => VerifierError::Backend { op: "decode", reason: other.to_string() },
    }
}
