//! Speculative rejection sampling (Leviathan et al. 2023; Chen et al. 2023): the acceptance rule
//! that keeps hybrid sampling exactly distributed as the verifier sampling alone.
//!
//! A draft token x drawn from the drafter's distribution q is accepted with probability
//! min(1, p(x) / q(x)), where p is the verifier's processed distribution at that position. On
//! rejection the verifier's token is drawn from the residual max(0, p − q), normalised; after a fully
//! accepted block the bonus token is drawn from p. Whatever q is, the token that comes out is
//! distributed as p, so the drafter decides only how often drafts are accepted.
//!
//! A draft token whose reported q does not list it (q(x) = 0, or no distribution reported) is
//! judged as drawn from the point mass on x: accepted with probability p(x), otherwise replaced by a
//! draw from p without x. That is exact for any token chosen before the verifier's draws, so a
//! deterministic drafter (n-gram lookup, greedy models) needs to report nothing.

use crate::TokenId;
use crate::sampling::{Purpose, SparseDist, draw, draw_weighted, prob_of, uniform};

/// The verdict on one draft token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The draft token stands.
    Accepted,
    /// The draft token is rejected; the verifier's token replaces it.
    Rejected(TokenId),
}

/// Judges draft token `x` under the verifier's distribution `p` and the drafter's `q` (either as
/// reported, normalised, or the point mass on `x`; see the module docs), with the uniforms
/// `u_accept` and `u_resample` in [0, 1).
pub fn judge(p: &[(TokenId, f32)], q: &[(TokenId, f32)], x: TokenId, u_accept: f64, u_resample: f64) -> Judgement {
    let q_total: f64 = q.iter().map(|e| f64::from(e.1.max(0.0))).sum();
    let qx = if q_total > 0.0 { f64::from(prob_of(q, x).max(0.0)) / q_total } else { 0.0 };
    let point_mass = [(x, 1.0f32)];
    let (q, q_total, qx): (&[(TokenId, f32)], f64, f64) =
        if qx > 0.0 { (q, q_total, qx) } else { (&point_mass, 1.0, 1.0) };
    let px = f64::from(prob_of(p, x));
    if u_accept < px / qx {
        return Judgement::Accepted;
    }
    let mut q_by_id: Vec<(TokenId, f64)> = q.iter().map(|e| (e.0, f64::from(e.1.max(0.0)) / q_total)).collect();
    q_by_id.sort_unstable_by_key(|e| e.0);
    let q_of = |t: TokenId| q_by_id.binary_search_by_key(&t, |e| e.0).map_or(0.0, |i| q_by_id[i].1);
    let residual = p.iter().map(|e| (e.0, (f64::from(e.1) - q_of(e.0)).max(0.0)));
    // The residual is empty only when p = q up to rounding, where rejection is (almost) impossible;
    // p itself is then the right distribution.
    let token = draw_weighted(residual, u_resample).or_else(|| draw(p, u_resample)).unwrap_or(x);
    Judgement::Rejected(token)
}

/// The outcome of verifying a block by speculative sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Draft tokens accepted (a prefix of the block).
    pub accepted: usize,
    /// The kept tokens: the accepted drafts, then the verifier's own token (the residual draw after
    /// a rejection, the bonus from p after a full accept), each with its probability under p.
    pub tokens: Vec<(TokenId, f32)>,
}

/// Verifies `draft` by speculative sampling. `q[i]` is the distribution draft token i was drawn
/// from (missing or empty: deterministic); `p(i)` gives the verifier's processed distribution after
/// the pending token and the first `i` drafts (`i` up to `draft.len()`). The uniforms are keyed by
/// `seed` and the absolute position of the decided token, `first_position` being draft token 0's.
pub fn speculate(
    draft: &[TokenId],
    q: &[SparseDist],
    mut p: impl FnMut(usize) -> SparseDist,
    seed: u64,
    first_position: usize,
) -> Outcome {
    let mut tokens = Vec::with_capacity(draft.len() + 1);
    for (i, &x) in draft.iter().enumerate() {
        let p_i = p(i);
        let pos = first_position + i;
        let q_i = q.get(i).map_or(&[][..], |d| &d[..]);
        match judge(&p_i, q_i, x, uniform(seed, pos, Purpose::Accept), uniform(seed, pos, Purpose::Resample)) {
            Judgement::Accepted => tokens.push((x, prob_of(&p_i, x))),
            Judgement::Rejected(t) => {
                tokens.push((t, prob_of(&p_i, t)));
                return Outcome { accepted: i, tokens };
            }
        }
    }
    let p_last = p(draft.len());
    let pos = first_position + draft.len();
    let bonus = sample(&p_last, seed, pos);
    tokens.push((bonus, prob_of(&p_last, bonus)));
    Outcome { accepted: draft.len(), tokens }
}

/// Plain sampling from p at token position `position`.
pub fn sample(p: &[(TokenId, f32)], seed: u64, position: usize) -> TokenId {
    // `process` never returns an empty distribution for a logits row with a finite value.
    draw(p, uniform(seed, position, Purpose::Sample)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact output distribution of `judge` for x ~ q, integrated over grids of uniforms.
    /// Inverse-CDF draws and the acceptance threshold are step functions of the uniforms, so a grid
    /// of n midpoints is exact up to 1/n per step. Which token replaces a rejected x does not depend
    /// on the acceptance uniform, so the two grids factor.
    fn output_distribution(p: &[(TokenId, f32)], q: &[(TokenId, f32)], vocab: usize) -> Vec<f64> {
        const N: usize = 4000;
        let grid = |i: usize| (i as f64 + 0.5) / N as f64;
        let q_total: f64 = q.iter().map(|e| f64::from(e.1)).sum();
        let mut out = vec![0.0; vocab];
        for &(x, qx) in q {
            let qx = qx as f64 / q_total;
            let accepted = (0..N).filter(|&a| judge(p, q, x, grid(a), 0.5) == Judgement::Accepted).count();
            out[x as usize] += qx * accepted as f64 / N as f64;
            let rejected = (N - accepted) as f64 / N as f64;
            for r in 0..N {
                // An acceptance uniform just below 1 rejects whenever rejection is possible.
                if let Judgement::Rejected(t) = judge(p, q, x, 1.0 - 1e-12, grid(r)) {
                    out[t as usize] += qx * rejected / N as f64;
                }
            }
        }
        out
    }

    fn assert_is_p(p: &[(TokenId, f32)], q: &[(TokenId, f32)]) {
        let out = output_distribution(p, q, 6);
        for t in 0..6u32 {
            let want = f64::from(prob_of(p, t));
            assert!((out[t as usize] - want).abs() < 2e-3, "token {t}: {} vs p {want}; p {p:?} q {q:?}", out[t as usize]);
        }
    }

    #[test]
    fn accepts_with_probability_p_over_q() {
        let p = [(0, 0.3), (1, 0.7)];
        let q = [(0, 0.6), (1, 0.4)];
        assert_eq!(judge(&p, &q, 0, 0.49, 0.5), Judgement::Accepted);
        assert!(matches!(judge(&p, &q, 0, 0.51, 0.5), Judgement::Rejected(_)));
    }

    #[test]
    fn a_token_more_likely_under_p_is_always_accepted() {
        let p = [(0, 0.3), (1, 0.7)];
        let q = [(0, 0.6), (1, 0.4)];
        assert_eq!(judge(&p, &q, 1, 0.999_999, 0.5), Judgement::Accepted);
    }

    #[test]
    fn a_token_impossible_under_p_is_always_rejected() {
        let p = [(0, 0.4), (1, 0.6)];
        let q = [(2, 0.5), (1, 0.5)];
        assert!(matches!(judge(&p, &q, 2, 0.0, 0.5), Judgement::Rejected(0 | 1)));
    }

    #[test]
    fn rejection_draws_from_the_normalised_residual() {
        // p − q = (0.3, −0.3, 0): only token 0 has residual mass.
        let p = [(0, 0.5), (1, 0.3), (2, 0.2)];
        let q = [(0, 0.2), (1, 0.6), (2, 0.2)];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(judge(&p, &q, 1, 0.9, u), Judgement::Rejected(0));
        }
    }

    #[test]
    fn a_draft_missing_from_q_is_judged_as_a_point_mass() {
        // q(x) = 0 for the drafted x: accept with p(x) = 0.25, else draw from p without x.
        let p = [(0, 0.25), (1, 0.5), (2, 0.25)];
        let q = [(1, 1.0)];
        assert_eq!(judge(&p, &q, 0, 0.24, 0.0), Judgement::Accepted);
        for u in [0.0, 0.5, 0.7, 0.999] {
            assert!(matches!(judge(&p, &q, 0, 0.26, u), Judgement::Rejected(1 | 2)));
        }
        assert_eq!(judge(&p, &[], 0, 0.26, 0.0), Judgement::Rejected(1));
    }

    #[test]
    fn the_output_is_distributed_as_p_for_any_q() {
        let cases: Vec<(SparseDist, SparseDist)> = vec![
            // Overlapping supports.
            (vec![(0, 0.1), (1, 0.4), (2, 0.2), (3, 0.3)], vec![(0, 0.4), (1, 0.1), (2, 0.2), (3, 0.3)]),
            // q puts mass where p has none (p = 0), and p where q has none (q = 0).
            (vec![(0, 0.5), (1, 0.5)], vec![(1, 0.3), (4, 0.7)]),
            // Disjoint supports: every draft is rejected and the residual is p itself.
            (vec![(0, 0.2), (5, 0.8)], vec![(2, 0.5), (3, 0.5)]),
            // q = p: everything is accepted.
            (vec![(1, 0.25), (2, 0.75)], vec![(1, 0.25), (2, 0.75)]),
            // Greedy p (a point mass), deterministic q.
            (vec![(3, 1.0)], vec![(2, 1.0)]),
            // q not normalised (a top-k renormalised in f32, say).
            (vec![(0, 0.3), (1, 0.3), (2, 0.4)], vec![(0, 0.45), (2, 0.45)]),
        ];
        for (p, q) in cases {
            assert_is_p(&p, &q);
        }
    }

    #[test]
    fn a_deterministic_drafter_is_exact_for_any_token() {
        let p = [(0, 0.1), (1, 0.6), (2, 0.3)];
        for x in 0..4 {
            assert_is_p(&p, &[(x, 1.0)]);
        }
    }

    #[test]
    fn a_fully_accepted_block_ends_with_a_bonus_from_p() {
        let p = |_: usize| vec![(5, 1.0f32)];
        let out = speculate(&[5, 5], &[], p, 1, 10);
        assert_eq!(out.accepted, 2);
        assert_eq!(out.tokens, vec![(5, 1.0), (5, 1.0), (5, 1.0)]);
    }

    #[test]
    fn speculation_stops_at_the_first_rejection() {
        let p = |i: usize| if i == 1 { vec![(7, 1.0f32)] } else { vec![(1, 1.0)] };
        let out = speculate(&[1, 2, 1], &[vec![(1, 1.0)], vec![(2, 1.0)]], p, 3, 0);
        assert_eq!(out.accepted, 1);
        assert_eq!(out.tokens, vec![(1, 1.0), (7, 1.0)]);
    }

    #[test]
    fn speculation_is_reproducible_per_seed() {
        let p = |_: usize| vec![(0, 0.3f32), (1, 0.3), (2, 0.4)];
        let q = vec![vec![(0, 0.5), (1, 0.5)]; 3];
        let run = |seed| speculate(&[0, 1, 0], &q, p, seed, 100);
        assert_eq!(run(9), run(9));
        let differ = (0..20).any(|s| run(s) != run(9));
        assert!(differ, "different seeds should give different outcomes");
    }
}
