//! Property tests (proptest) of the acceptance rules on random drafts and distributions: the greedy
//! prefix rule and speculative rejection sampling never panic, accept only a real prefix of the
//! draft, emit exactly one token of the verifier's own after it, and (sampling) give tokens
//! distributed as the verifier's p whatever the drafter's q.

use proptest::prelude::*;

use crate::TokenId;
use crate::greedy::{Choice, accept_prefix, choose};
use crate::sampling::{SparseDist, prob_of};
use crate::speculative::{Judgement, judge, speculate};

const VOCAB: u32 = 6;

/// A sparse distribution over distinct ids below `VOCAB`, with zeros; normalised to sum 1 unless
/// every weight is 0 and `allow_empty`.
fn dist(allow_empty: bool) -> impl Strategy<Value = SparseDist> {
    prop::collection::btree_map(0..VOCAB, prop_oneof![Just(0.0f32), 0.0f32..1.0, Just(1.0)], 0..VOCAB as usize)
        .prop_filter("p has mass", move |m| allow_empty || m.values().any(|&w| w > 0.0))
        .prop_map(|m| {
            let total: f32 = m.values().sum();
            m.into_iter().map(|(t, w)| (t, if total > 0.0 { w / total } else { w })).collect()
        })
}

/// A drafter's q as it may arrive: unnormalised, with zeros, or empty (deterministic drafter).
fn reported_q() -> impl Strategy<Value = SparseDist> {
    prop::collection::btree_map(0..VOCAB, prop_oneof![Just(0.0f32), 0.0f32..2.0], 0..VOCAB as usize)
        .prop_map(|m| m.into_iter().collect())
}

fn unit() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(1.0 - f64::EPSILON), 0.0f64..1.0]
}

/// The output distribution of `judge` for x ~ q (normalised), integrated over grids of uniforms:
/// inverse-CDF draws and the acceptance threshold are step functions, so `N` midpoints are exact up
/// to about 1/N per step.
fn judged_distribution(p: &[(TokenId, f32)], q: &[(TokenId, f32)]) -> Vec<f64> {
    const N: usize = 400;
    let grid = |i: usize| (i as f64 + 0.5) / N as f64;
    let q_total: f64 = q.iter().map(|e| f64::from(e.1)).sum();
    let mut out = vec![0.0; VOCAB as usize];
    for &(x, qx) in q.iter().filter(|e| e.1 > 0.0) {
        let qx = f64::from(qx) / q_total;
        let accepted = (0..N).filter(|&a| judge(p, q, x, grid(a), 0.5) == Judgement::Accepted).count();
        out[x as usize] += qx * accepted as f64 / N as f64;
        let rejected = (N - accepted) as f64 / N as f64;
        for r in 0..N {
            if let Judgement::Rejected(t) = judge(p, q, x, 1.0 - 1e-12, grid(r)) {
                out[t as usize] += qx * rejected / N as f64;
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn greedy_acceptance_is_the_longest_matching_prefix(
        draft in prop::collection::vec(0..3u32, 0..12),
        verifier in prop::collection::vec(0..3u32, 13),
    ) {
        let choices: Vec<Choice> =
            verifier[..=draft.len()].iter().map(|&token| Choice { token, prob: 1.0, margin: 0.0 }).collect();
        let a = accept_prefix(&draft, &choices);
        prop_assert!(a <= draft.len());
        prop_assert!(draft[..a].iter().zip(&choices).all(|(d, c)| *d == c.token), "accepted a mismatch");
        if a < draft.len() {
            prop_assert_ne!(draft[a], choices[a].token, "stopped before the first mismatch");
        }
    }

    #[test]
    fn choose_takes_the_first_maximum_and_never_panics(logits in prop::collection::vec(
        prop_oneof![-50.0f32..50.0, Just(f32::NEG_INFINITY), Just(f32::NAN), Just(0.0)], 1..40,
    )) {
        let c = choose(&logits);
        prop_assert!((c.token as usize) < logits.len());
        let finite: Vec<f32> = logits.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.len() == logits.len() {
            let best = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(c.token as usize, logits.iter().position(|&v| v == best).unwrap_or(usize::MAX));
            prop_assert!(c.prob > 0.0 && c.prob <= 1.0 + 1e-6 && c.margin >= 0.0, "{c:?}");
        }
    }

    #[test]
    fn judge_accepts_only_possible_tokens_and_replaces_with_possible_ones(
        p in dist(false), q in reported_q(), x in 0..VOCAB + 2, ua in unit(), ur in unit(),
    ) {
        match judge(&p, &q, x, ua, ur) {
            Judgement::Accepted => prop_assert!(prob_of(&p, x) > 0.0, "accepted {x} with p(x) = 0"),
            Judgement::Rejected(t) => prop_assert!(prob_of(&p, t) > 0.0, "replaced {x} by {t} with p(t) = 0"),
        }
    }

    #[test]
    fn speculation_keeps_a_draft_prefix_and_adds_one_verifier_token(
        draft in prop::collection::vec(0..VOCAB, 0..8),
        ps in prop::collection::vec(dist(false), 9),
        qs in prop::collection::vec(reported_q(), 0..9),
        seed in any::<u64>(),
        first in 0usize..1 << 20,
    ) {
        let out = speculate(&draft, &qs, |i| ps[i].clone(), seed, first);
        prop_assert!(out.accepted <= draft.len());
        prop_assert_eq!(out.tokens.len(), out.accepted + 1);
        for (i, &(t, prob)) in out.tokens.iter().enumerate() {
            if i < out.accepted {
                prop_assert_eq!(t, draft[i], "kept token {} is not the draft's", i);
            }
            prop_assert!(prob_of(&ps[i], t) > 0.0, "token {t} at {i} is impossible under p");
            prop_assert_eq!(prob, prob_of(&ps[i], t));
        }
        prop_assert_eq!(speculate(&draft, &qs, |i| ps[i].clone(), seed, first), out, "not reproducible");
    }
}

proptest! {
    // Each case integrates the rule over 2 × 400 uniforms per draft token: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn judged_tokens_are_distributed_as_p_for_any_q(p in dist(false), q in dist(false)) {
        let out = judged_distribution(&p, &q);
        for t in 0..VOCAB {
            let want = f64::from(prob_of(&p, t));
            prop_assert!((out[t as usize] - want).abs() < 0.02, "token {t}: {} vs p {want}; p {p:?} q {q:?}", out[t as usize]);
        }
    }
}
