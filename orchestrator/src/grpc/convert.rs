//! Between the wire (`duet.v1` messages, `tonic::Status`) and the engine's and verifier's types:
//! the one mapping of errors to status codes, and the field checks that answer INVALID_ARGUMENT
//! naming the field.

use duet_proto::v1 as pb;
use duet_verifier::{BatchShare, Choice, TokenId, Verdict, VerifierError};
use tonic::{Code, Status};

use crate::engine::{MAX_BLOCK_SIZE, PreviousBlock, Stats, StopReason};

/// Longest session id a client may choose.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// INVALID_ARGUMENT naming the field: "`field` must ...".
pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("`{field}` {problem}"))
}

/// Checks a session id: present and at most [`MAX_SESSION_ID_LEN`] bytes.
pub fn check_session_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("session_id", "is required"));
    }
    if id.len() > MAX_SESSION_ID_LEN {
        return Err(invalid("session_id", format!("must be at most {MAX_SESSION_ID_LEN} bytes, got {}", id.len())));
    }
    Ok(())
}

/// The status a verifier error becomes on the wire.
pub fn status_from_verifier(e: &VerifierError) -> Status {
    let code = match e {
        VerifierError::InvalidRequest(_) | VerifierError::ContextFull { .. } => Code::InvalidArgument,
        VerifierError::NoFreeSession(_) => Code::ResourceExhausted,
        VerifierError::WorkerGone | VerifierError::Unavailable(_) => Code::Unavailable,
        VerifierError::ModelMissing(_)
        | VerifierError::ModelLoad { .. }
        | VerifierError::Context(_)
        | VerifierError::Config(_)
        | VerifierError::Backend { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The verifier error a status from a remote verifier becomes, so the engine sees remote and
/// in-process verifiers alike.
pub fn verifier_from_status(op: &'static str, s: &Status) -> VerifierError {
    match s.code() {
        Code::InvalidArgument => VerifierError::InvalidRequest(s.message().to_owned()),
        Code::ResourceExhausted => VerifierError::Backend { op, reason: format!("resource exhausted: {}", s.message()) },
        // The replica went away (or restarted and lost the session's connection): a 503, not a 500.
        Code::Unavailable | Code::Cancelled => VerifierError::Unavailable(format!("{op}: {}", s.message())),
        // A status the client's own transport made (an h2 or hyper error underneath, e.g. the
        // connection torn down while a call was in flight), not one the replica sent: it went away.
        Code::Internal | Code::Unknown if std::error::Error::source(s).is_some() => {
            VerifierError::Unavailable(format!("{op}: the connection failed: {}", s.message()))
        }
        _ => VerifierError::Backend { op, reason: format!("{:?}: {}", s.code(), s.message()) },
    }
}

/// A verifier choice on the wire.
pub fn choice_to_pb(c: &Choice) -> pb::TokenChoice {
    pb::TokenChoice { token: c.token, prob: c.prob, margin: c.margin }
}

/// A verifier choice from the wire.
pub fn choice_from_pb(c: &pb::TokenChoice) -> Choice {
    Choice { token: c.token, prob: c.prob, margin: c.margin }
}

/// A verdict on the wire; `features` rows start at context position `first_row`.
pub fn verdict_to_pb(v: Verdict, session_len: usize, feature_dim: usize, first_row: usize) -> pb::Verdict {
    let hidden_states = if v.features.is_empty() {
        None
    } else {
        Some(pb::Features { dim: feature_dim as u32, first_row: first_row as u64, data: v.features })
    };
    pb::Verdict {
        accepted: v.accepted as u32,
        next: Some(choice_to_pb(&v.next)),
        choices: v.choices.iter().map(choice_to_pb).collect(),
        hidden_states,
        session_len: session_len as u64,
        batch: (v.batch != BatchShare::default()).then_some(pb::BatchShare {
            blocks: v.batch.blocks as u32,
            rows: v.batch.rows as u32,
            gained: v.batch.gained as u32,
        }),
    }
}

/// A verdict from the wire, checked for the shape the engine relies on.
pub fn verdict_from_pb(v: pb::Verdict, draft_len: usize) -> Result<(Verdict, usize), VerifierError> {
    let bad = |reason: String| VerifierError::Backend { op: "remote verifier reply", reason };
    let next = v.next.as_ref().map(choice_from_pb).ok_or_else(|| bad("the verdict has no `next` token".into()))?;
    let accepted = v.accepted as usize;
    if accepted > draft_len || v.choices.len() != accepted + 1 {
        return Err(bad(format!(
            "the verdict accepts {accepted} of {draft_len} draft tokens with {} choices",
            v.choices.len()
        )));
    }
    let features = v.hidden_states.map(|f| f.data).unwrap_or_default();
    // Only the policy's pricing reads the batch, never the output: an absent one means alone.
    let batch = v.batch.map_or_else(BatchShare::default, |b| BatchShare {
        blocks: b.blocks as usize,
        rows: b.rows as usize,
        gained: b.gained as usize,
    });
    let choices = v.choices.iter().map(choice_from_pb).collect();
    let verdict = Verdict { accepted, next, choices, features, next_dist: Vec::new(), batch };
    Ok((verdict, v.session_len as usize))
}

/// The previous round's block on the wire.
pub fn previous_to_pb(p: &PreviousBlock) -> pb::PreviousBlock {
    pb::PreviousBlock { draft: p.draft.clone(), accepted: p.accepted as u32, correction: p.correction }
}

/// The previous round's block from the wire, checked.
pub fn previous_from_pb(p: pb::PreviousBlock) -> Result<PreviousBlock, Status> {
    check_previous(&p)?;
    Ok(PreviousBlock { draft: p.draft, accepted: p.accepted as usize, correction: p.correction })
}

/// Checks the previous round's block: at most [`MAX_BLOCK_SIZE`] tokens, `accepted` within it.
pub fn check_previous(p: &pb::PreviousBlock) -> Result<(), Status> {
    if p.draft.len() > MAX_BLOCK_SIZE {
        return Err(invalid(
            "previous.draft",
            format!("must hold at most {MAX_BLOCK_SIZE} tokens (a block), got {}", p.draft.len()),
        ));
    }
    if p.accepted as usize > p.draft.len() {
        return Err(invalid(
            "previous.accepted",
            format!("must be at most the block's {} tokens, got {}", p.draft.len(), p.accepted),
        ));
    }
    Ok(())
}

/// Checks that every token id is inside a vocabulary of `n_vocab` ids (0: no check).
pub fn check_tokens(field: &str, tokens: &[TokenId], n_vocab: usize) -> Result<(), Status> {
    if n_vocab == 0 {
        return Ok(());
    }
    match tokens.iter().find(|&&t| t as usize >= n_vocab) {
        Some(t) => Err(invalid(field, format!("holds token id {t}, outside the vocabulary of {n_vocab} ids"))),
        None => Ok(()),
    }
}

/// Why a generation stopped, on the wire.
pub fn stop_to_pb(s: StopReason) -> pb::StopReason {
    match s {
        StopReason::Eos => pb::StopReason::Eos,
        StopReason::MaxTokens => pb::StopReason::MaxTokens,
        StopReason::ContextFull => pb::StopReason::ContextFull,
    }
}

/// A generation's statistics on the wire.
pub fn stats_to_pb(s: &Stats) -> pb::GenerationStats {
    pb::GenerationStats {
        prompt_tokens: s.prompt_tokens as u32,
        generated_tokens: s.generated_tokens as u32,
        rounds: s.rounds as u32,
        drafted: s.drafted as u32,
        accepted: s.accepted as u32,
        mean_accepted_length: s.mean_accepted_length,
        wall_s: s.wall_s,
        tokens_per_s: s.tokens_per_s,
        ttft_s: s.ttft_s,
        drafter_s: s.drafter_s,
        verifier_s: s.verifier_s,
        drafter_failures: s.drafter_failures as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(token: TokenId) -> Choice {
        Choice { token, prob: 0.5, margin: 1.0 }
    }

    #[test]
    fn a_verdict_survives_the_wire() {
        let batch = BatchShare { blocks: 3, rows: 9, gained: 5 };
        let choices = vec![choice(3), choice(7)];
        let v = Verdict { accepted: 1, next: choice(7), choices, features: vec![1.0, 2.0], next_dist: vec![], batch };
        let (back, len) = verdict_from_pb(verdict_to_pb(v.clone(), 12, 1, 10), 3).expect("valid verdict");
        assert_eq!(back, v);
        assert_eq!(len, 12);
        let alone = Verdict { batch: BatchShare::default(), ..v };
        assert_eq!(verdict_from_pb(verdict_to_pb(alone.clone(), 12, 1, 10), 3).expect("valid verdict").0, alone);
    }

    #[test]
    fn a_broken_connection_is_unavailable_and_a_replica_error_is_not() {
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(matches!(verifier_from_status("remote step", &broken), VerifierError::Unavailable(_)), "{broken:?}");
        let sent = Status::internal("the replica failed");
        assert!(matches!(verifier_from_status("remote step", &sent), VerifierError::Backend { .. }));
    }

    #[test]
    fn a_verdict_accepting_more_than_the_draft_is_refused() {
        let v = Verdict { accepted: 2, next: choice(7), choices: vec![choice(3), choice(4), choice(7)], features: vec![], next_dist: vec![], batch: Default::default() };
        assert!(verdict_from_pb(verdict_to_pb(v, 5, 0, 0), 1).is_err());
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let s = check_tokens("new_tokens", &[1, 99], 50).expect_err("out of range");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("`new_tokens`"), "{}", s.message());
        assert_eq!(check_session_id("").expect_err("empty").code(), Code::InvalidArgument);
    }

    #[test]
    fn a_full_verifier_answers_resource_exhausted() {
        assert_eq!(status_from_verifier(&VerifierError::NoFreeSession(4)).code(), Code::ResourceExhausted);
    }
}
