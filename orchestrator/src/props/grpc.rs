//! The gRPC request conversion and field checks on arbitrary messages.

use duet_proto::v1 as pb;
use proptest::prelude::*;
use tonic::Code;

use crate::engine::{MAX_BLOCK_SIZE, MAX_TOKENS_LIMIT};
use crate::grpc::convert::{MAX_SESSION_ID_LEN, check_session_id, check_tokens, previous_from_pb, verdict_from_pb};
use crate::grpc::orchestrator_service::to_request;

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0), Just(1.0), Just(f32::NAN), Just(f32::INFINITY), Just(-0.0), any::<f32>()]
}

fn any_generate_request() -> impl Strategy<Value = pb::GenerateRequest> {
    let chat = prop::collection::vec(("[a-z]{0,9}", ".{0,8}"), 0..3).prop_map(|m| {
        pb::generate_request::Input::Chat(pb::ChatMessages {
            messages: m.into_iter().map(|(role, content)| pb::ChatMessage { role, content }).collect(),
        })
    });
    let input = prop::option::of(prop_oneof![".{0,8}".prop_map(pb::generate_request::Input::Prompt), chat]);
    let sampling = prop::option::of((any_f32(), any_f32(), prop_oneof![Just(0u32), any::<u32>()], any::<u64>()).prop_map(
        |(temperature, top_p, top_k, seed)| pb::SamplingParams { temperature, top_p, top_k, seed },
    ));
    let size = || prop_oneof![0u32..300, Just(MAX_TOKENS_LIMIT as u32 + 1), any::<u32>()];
    let drafter = prop_oneof![Just(String::new()), Just("ngram".to_owned()), ".{0,8}"];
    (input, size(), sampling, -1i32..6, drafter, size(), prop::collection::vec(".{0,4}", 0..20)).prop_map(
        |(input, max_tokens, sampling, mode, drafter, block_size, stop)| pb::GenerateRequest {
            input,
            max_tokens,
            sampling,
            mode,
            drafter,
            block_size,
            stop,
        },
    )
}

fn choice() -> impl Strategy<Value = pb::TokenChoice> {
    (any::<u32>(), any_f32(), any_f32()).prop_map(|(token, prob, margin)| pb::TokenChoice { token, prob, margin })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_generate_request_converts_or_is_invalid_argument_naming_a_field(r in any_generate_request()) {
        match to_request(r) {
            Ok(req) => {
                prop_assert_eq!(req.validate(), Ok(()));
                prop_assert!(req.max_tokens.is_none_or(|n| n <= MAX_TOKENS_LIMIT));
                prop_assert!(req.block_size.is_none_or(|k| k <= MAX_BLOCK_SIZE));
            }
            Err(s) => {
                prop_assert_eq!(s.code(), Code::InvalidArgument);
                prop_assert!(s.message().starts_with('`'), "{}", s.message());
            }
        }
    }

    #[test]
    fn field_checks_accept_or_name_the_field(
        id in ".{0,140}",
        tokens in prop::collection::vec(any::<u32>(), 0..8),
        n_vocab in 0usize..1000,
        draft in prop::collection::vec(0u32..50, 0..300),
        accepted in any::<u32>(),
    ) {
        match check_session_id(&id) {
            Ok(()) => prop_assert!(!id.is_empty() && id.len() <= MAX_SESSION_ID_LEN),
            Err(s) => prop_assert!(s.code() == Code::InvalidArgument && s.message().starts_with("`session_id`")),
        }
        match check_tokens("new_tokens", &tokens, n_vocab) {
            Ok(()) => prop_assert!(n_vocab == 0 || tokens.iter().all(|&t| (t as usize) < n_vocab)),
            Err(s) => prop_assert!(s.code() == Code::InvalidArgument && s.message().starts_with("`new_tokens`")),
        }
        let len = draft.len();
        match previous_from_pb(pb::PreviousBlock { draft, accepted, correction: 0 }) {
            Ok(p) => prop_assert!(p.accepted <= p.draft.len() && p.draft.len() <= MAX_BLOCK_SIZE),
            Err(s) => {
                prop_assert_eq!(s.code(), Code::InvalidArgument);
                prop_assert!(s.message().starts_with("`previous."), "{}", s.message());
                prop_assert!(accepted as usize > len || len > MAX_BLOCK_SIZE);
            }
        }
    }

    #[test]
    fn a_remote_verdict_is_checked_not_trusted(
        accepted in prop_oneof![0u32..10, any::<u32>()],
        next in prop::option::of(choice()),
        choices in prop::collection::vec(choice(), 0..12),
        draft_len in 0usize..10,
    ) {
        let v = pb::Verdict { accepted, next, choices, hidden_states: None, session_len: 0, batch: None };
        if let Ok((verdict, _)) = verdict_from_pb(v, draft_len) {
            prop_assert!(verdict.accepted <= draft_len);
            prop_assert_eq!(verdict.choices.len(), verdict.accepted + 1);
        }
    }
}
