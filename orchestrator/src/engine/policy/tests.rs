//! Tests of the cost-aware draft-length policy.

use super::*;

/// The 1.5B's curve from FACTS.md (k = 0, 2, 4, 8).
fn facts_curve() -> CostCurve {
    CostCurve::from_times(&[0, 2, 4, 8], &[1.0, 1.6, 2.6, 4.4]).expect("curve")
}

#[test]
fn a_curve_interpolates_between_measured_sizes() {
    let c = facts_curve();
    assert_eq!(c.max_len(), 8);
    assert!((c.cost(1) - 1.3).abs() < 1e-9);
    assert!((c.cost(6) - 3.5).abs() < 1e-9);
    assert!((c.cost(10) - 5.3).abs() < 1e-9, "extrapolated along the last slope: {}", c.cost(10));
    assert!(CostCurve::from_times(&[1, 2], &[1.0, 2.0]).is_err());
    let noisy = CostCurve::from_times(&[0, 1, 2], &[1.0, 0.8, 1.5]).expect("curve");
    assert_eq!(noisy.costs, vec![1.0, 1.0, 1.5], "never cheaper than a shorter block");
    assert!(CostCurve::from_times(&[0, 2], &[1.0, f64::NAN]).is_err());
}

#[test]
fn a_confident_drafter_gets_a_block_and_a_doubtful_one_none() {
    let c = facts_curve();
    assert!(best_length(&[0.95; 8], &c, 0.0) >= 2);
    assert_eq!(best_length(&[0.2; 8], &c, 0.0), 0);
    assert_eq!(best_length(&[], &c, 0.0), 0);
}

#[test]
fn a_costly_drafter_needs_more_confidence() {
    let c = facts_curve();
    assert!(best_length(&[0.6; 8], &c, 0.0) > 0);
    assert_eq!(best_length(&[0.6; 8], &c, 1.0), 0);
}

#[test]
fn the_best_length_follows_the_confidences() {
    // Sure of two tokens, then hopeless: more would only cost.
    let c = facts_curve();
    assert_eq!(best_length(&[0.98, 0.98, 0.01, 0.01], &c, 0.0), 2);
}

#[test]
fn drafts_must_be_surer_when_other_sessions_share_the_decode() {
    let c = facts_curve();
    // Three other sessions stepping plainly: their rows make a plain step cheap per token, and a
    // block's drafts take passes of their own after every session's first row.
    let busy = OtherLoad { rows: 3.0, gained: 3.0 };
    assert_eq!(best_shared_length(&[0.6; 8], &c, 0.0, OtherLoad::ALONE), best_length(&[0.6; 8], &c, 0.0));
    assert!(best_length(&[0.6; 8], &c, 0.0) > 0, "alone, 60% drafts pay");
    assert_eq!(best_shared_length(&[0.6; 8], &c, 0.0, busy), 0, "shared, they do not");
    // (3 + E(8)) / (c(3) + c(7)) = 11.0 / 6.05 against 4 / c(3) = 4 / 2.1: not even near-certain
    // blocks pay beside three plain steps ...
    assert_eq!(best_shared_length(&[0.97; 8], &c, 0.0, busy), 0);
    // ... but beside one they do, and shorter than alone.
    let one = OtherLoad { rows: 1.0, gained: 1.0 };
    let k = best_shared_length(&[0.97; 8], &c, 0.0, one);
    assert!(k > 0, "near-certain drafts pay beside one other session");
    assert!(best_shared_length(&[0.9; 8], &c, 0.0, one) < best_length(&[0.9; 8], &c, 0.0), "and blocks get shorter");
}

#[test]
fn a_shared_block_is_priced_as_passes_of_its_own() {
    let c = facts_curve();
    // Alone: one pass of k + 1 rows.
    assert!((shared_cost(&c, 0.0, 4) - c.cost(4)).abs() < 1e-12);
    // Beside three rows: the call's first pass, c(3), then the drafts' own, c(k − 1) (a single
    // draft costs a whole plain step).
    assert!((shared_cost(&c, 3.0, 1) - (c.cost(3) + 1.0)).abs() < 1e-12);
    assert!((shared_cost(&c, 3.0, 4) - (c.cost(3) + c.cost(3))).abs() < 1e-12);
    // In between, mixed by how often the calls were shared.
    let half = shared_cost(&c, 0.5, 2);
    assert!((half - (0.5 * c.cost_at(2.5) + 0.5 * (c.cost_at(0.5) + c.cost(1)))).abs() < 1e-12);
}

#[test]
fn the_picker_learns_the_other_sessions_load_from_its_verdicts() {
    let mut alone = LengthPicker::new(facts_curve(), None);
    let mut shared = alone.clone();
    for _ in 0..6 {
        alone.observe_call(BatchShare { blocks: 1, rows: 1, gained: 1 }, 0, 0, 0.0);
        // Four sessions in each call: this one's plain step and three others' plain steps.
        shared.observe_call(BatchShare { blocks: 4, rows: 4, gained: 4 }, 0, 0, 0.0);
    }
    assert!((shared.others.rows - 3.0).abs() < 0.1, "{:?}", shared.others);
    assert_eq!(alone.others, OtherLoad::ALONE);
    assert!(alone.choose(&[0.6; 8], 8, 0.0) > 0);
    assert_eq!(shared.choose(&[0.6; 8], 8, 0.0), 0);
    // A verifier that reports no batch leaves the session alone.
    shared.observe_call(BatchShare::default(), 0, 0, 0.0);
    assert!(shared.others.rows < 3.0);
}

#[test]
fn a_free_verifier_takes_everything_worth_anything() {
    let flat = CostCurve { step_s: 0.01, costs: vec![1.0; 9] };
    assert_eq!(best_length(&[0.5; 8], &flat, 0.0), 8);
}

#[test]
fn calibration_learns_that_drafts_fail_and_probes_later() {
    let mut p = LengthPicker::new(facts_curve(), None);
    assert!(p.choose(&[], 8, 0.0) > 0, "the prior tries drafting");
    for _ in 0..30 {
        let k = p.choose(&[], 8, 0.0);
        p.observe(&[], k, 0);
    }
    assert_eq!(p.choose(&[], 8, 0.0), 0, "a drafter that never hits is not used");
    let mut sent = Vec::new();
    for _ in 0..(3 * PROBE_EVERY) {
        let k = p.choose(&[], 8, 0.0);
        sent.push(k);
        p.observe(&[], k, 0);
    }
    let probes = sent.iter().filter(|&&k| k == 1).count();
    assert!((1..=3).contains(&probes), "at most one probe per {PROBE_EVERY} idle rounds: {sent:?}");
}

/// Rounds at which a probe (a single draft) was sent, over `rounds` rounds of a drafter whose
/// drafts are accepted only where `hits` says so.
fn probe_rounds(p: &mut LengthPicker, rounds: usize, hits: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut at = Vec::new();
    for r in 0..rounds {
        let k = p.choose(&[], 8, 0.0);
        if k == 1 {
            at.push(r);
        }
        p.observe(&[], k, if hits(r) { k } else { 0 });
    }
    at
}

#[test]
fn probes_that_gain_nothing_come_ever_more_rarely_and_a_hit_brings_them_back() {
    let mut p = LengthPicker::new(facts_curve(), None);
    let at = probe_rounds(&mut p, 600, |_| false);
    let gaps: Vec<usize> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "gaps never shrink: {gaps:?}");
    assert_eq!(gaps.last().copied(), Some(MAX_PROBE_EVERY + 1), "{gaps:?}");
    assert!(at.len() <= 10, "{at:?}");
    // A probe that is accepted resets the wait.
    let mut q = p.clone();
    let next = probe_rounds(&mut q, MAX_PROBE_EVERY + 2, |_| false)[0];
    let mut r = p.clone();
    let after_hit = probe_rounds(&mut r, next + 1 + 3 * PROBE_EVERY, |i| i == next);
    assert!(after_hit.len() >= 2, "probes resume after a hit: {after_hit:?}");
    assert!(after_hit[1] - after_hit[0] <= 2 * PROBE_EVERY, "{after_hit:?}");
}

#[test]
fn probes_that_gain_nothing_cost_at_most_the_budget_when_two_rows_cost_two_steps() {
    // This CPU's curve (AMD EPYC, 2 threads): a first draft doubles the step.
    let steep = CostCurve::from_times(&[0, 1, 2, 4, 8], &[1.0, 2.01, 2.4, 3.44, 5.67]).expect("curve");
    let mut p = LengthPicker::new(steep, None);
    let at = probe_rounds(&mut p, 300, |_| false);
    let spent = at.len() as f64 * 1.01;
    assert!(at.len() >= 2 && at[1] - at[0] >= 50, "one probe per 1.01 / {PROBE_BUDGET} rounds: {at:?}");
    assert!(spent / 300.0 < 0.025, "{at:?}");
    // On the flatter curve of FACTS.md the doubling alone keeps probes within the budget.
    let mut q = LengthPicker::new(facts_curve(), None);
    let at = probe_rounds(&mut q, 64, |_| false);
    // (The prior's first single drafts come before the probes.)
    assert_eq!(at[at.len() - 1] - at[at.len() - 2], 2 * PROBE_EVERY + 1, "{at:?}");
}

#[test]
fn a_generation_starts_from_what_the_last_one_with_its_drafter_learnt() {
    let memory = PolicyMemory::new();
    let fresh = LengthPicker::new(facts_curve(), Some(&memory));
    assert!(fresh.clone().choose(&[], 8, 0.0) > 0, "an empty memory starts from the prior");

    // An expensive drafter, sure of itself, that never hits: learnt once, skipped from the next
    // generation's start.
    let mut first = fresh;
    let step = first.curve.step_s;
    for _ in 0..40 {
        if first.wants_draft() {
            let k = first.choose(&[0.8; 8], 8, 0.5 * step);
            first.observe(&[0.8; 8], k, 0);
        } else {
            first.observe(&[], 0, 0);
        }
    }
    first.remember(&memory);
    let mut next = LengthPicker::new(facts_curve(), Some(&memory));
    assert!(!next.wants_draft(), "not called before its first probe");
    assert_eq!(next.choose(&[0.3; 8], 8, 0.5 * step), 0);
    // ... and its first probe waits as long as the last generation's probes had come to wait.
    assert!(first.probe_every > PROBE_EVERY);
    assert_eq!(next.probe_every, first.probe_every);

    // Acceptance stays with its text: the next generation's calibration starts from the prior.
    let prior = LengthPicker::new(facts_curve(), None).choose(&[0.5; 8], 8, 0.0);
    assert_eq!(LengthPicker::new(facts_curve(), Some(&memory)).choose(&[0.5; 8], 8, 0.0), prior);
    // A drafter that paid again is called again from the next start.
    let mut paying = LengthPicker::new(facts_curve(), Some(&memory));
    for _ in 0..(MAX_PROBE_EVERY + 2) {
        if paying.wants_draft() {
            let k = paying.choose(&[0.9; 8], 8, 0.5 * step);
            paying.observe(&[0.9; 8], k, k);
        } else {
            paying.observe(&[], 0, 0);
        }
    }
    paying.remember(&memory);
    let again = LengthPicker::new(facts_curve(), Some(&memory));
    assert!(again.wants_draft());
    assert_eq!(again.probe_every, PROBE_EVERY);
}

#[test]
fn a_drafter_is_taken_at_its_word_until_the_verdicts_say_otherwise() {
    let mut p = LengthPicker::new(facts_curve(), None);
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(&p.rates(&[0.9, 0.5], 2), &[0.9, 0.5]), "{:?}", p.rates(&[0.9, 0.5], 2));
    assert!(close(&p.rates(&[], 2), &[PRIOR_RATE; 2]), "no confidence: the prior");
    // Drafts it was 90% sure of are accepted half the time.
    for i in 0..60 {
        p.observe(&[0.9; 2], 1, i % 2);
    }
    let rate = p.rates(&[0.9], 1)[0];
    assert!((rate - 0.5).abs() < 0.05, "{rate}");
}

#[test]
fn a_probe_waits_for_a_draft_the_drafter_is_sure_of() {
    // Sure drafts that all fail: the calibration learns to send none.
    let mut p = LengthPicker::new(facts_curve(), None);
    for _ in 0..30 {
        let k = p.choose(&[0.9; 8], 8, 0.0);
        p.observe(&[0.9; 8], k, 0);
    }
    // A cheap drafter that doubts its drafts sends none, probes included, however long it waits.
    for _ in 0..(2 * MAX_PROBE_EVERY) {
        assert!(p.wants_draft());
        assert_eq!(p.choose(&[0.2; 8], 8, 0.0), 0);
        p.observe(&[0.2; 8], 0, 0);
    }
    assert!(p.is_probe_round());
    // The first draft it is sure of is the probe, sent alone.
    assert_eq!(p.choose(&[0.9; 8], 8, 0.0), 1);
}

#[test]
fn an_expensive_drafter_is_not_asked_every_round_for_a_sure_draft() {
    let mut p = LengthPicker::new(facts_curve(), None);
    let step = p.curve.step_s;
    let rounds = 8 * PROBE_EVERY;
    let mut called = 0;
    for _ in 0..rounds {
        let k = if p.wants_draft() {
            called += 1;
            p.choose(&[0.2; 8], 8, 0.5 * step)
        } else {
            0
        };
        assert_eq!(k, 0);
        p.observe(&[0.2; 8], k, 0);
    }
    assert!(called <= SKIP_AFTER + rounds / PROBE_EVERY + 1, "called {called} times in {rounds} rounds");
}

#[test]
fn calibration_learns_that_drafts_succeed() {
    let mut p = LengthPicker::new(facts_curve(), None);
    for _ in 0..30 {
        let k = p.choose(&[], 8, 0.0);
        p.observe(&[], k, k);
    }
    assert!(p.choose(&[], 8, 0.0) >= 4, "{}", p.choose(&[], 8, 0.0));
}

#[test]
fn an_expensive_drafter_that_does_not_pay_is_skipped_between_probes() {
    let mut p = LengthPicker::new(facts_curve(), None);
    let step = p.curve.step_s;
    let mut called = 0;
    for _ in 0..(2 * PROBE_EVERY + SKIP_AFTER) {
        if p.wants_draft() {
            called += 1;
            let k = p.choose(&[0.01; 8], 8, 0.5 * step);
            p.observe(&[0.01; 8], k, 0);
        } else {
            p.observe(&[], 0, 0);
        }
    }
    assert!(called <= SKIP_AFTER + 3, "called {called} times");
    // A cheap drafter is always asked.
    let mut cheap = LengthPicker::new(facts_curve(), None);
    for _ in 0..40 {
        assert!(cheap.wants_draft());
        let k = cheap.choose(&[0.01; 8], 8, 0.0);
        cheap.observe(&[0.01; 8], k, 0);
    }
}

#[test]
fn blocks_that_cost_more_than_the_curve_says_stop_being_sent() {
    // The EPYC host's curve, 45 ms a step; drafts a long copy would offer.
    let step = 0.045;
    let c = [1.0, 2.02, 2.47, 2.99, 3.55, 4.68, 5.78];
    let curve = CostCurve::from_times(&[0, 1, 2, 3, 4, 6, 8], &c.map(|x| x * step)).expect("curve");
    let alone = BatchShare { blocks: 1, rows: 4, gained: 4 };
    let mut p = LengthPicker::new(curve, None);
    // Two accepted blocks of 3 bank enough for the floor to allow another.
    for _ in 0..2 {
        p.observe(&[0.85; 3], 3, 3);
    }
    assert!(p.choose(&[0.85; 8], 8, 0.0) >= 3, "by the measured curve a sure copy pays");
    // Its blocks of 3 take 4.2 steps each, as the edit that fell to 0.91× found.
    for _ in 0..4 {
        p.observe_call(BatchShare { rows: 1, gained: 1, ..alone }, 0, 0, step);
        p.observe_call(alone, 3, 3, 4.2 * step);
    }
    assert!(p.cost_scale() > 1.4, "{}", p.cost_scale());
    assert_eq!(p.choose(&[0.85; 8], 8, 0.0), 0, "by the corrected one it does not");
    // The correction outlives the generation.
    let memory = PolicyMemory::new();
    p.remember(&memory);
    let next = LengthPicker::new(p.measured.clone(), Some(&memory));
    assert_eq!(next.cost_scale(), p.cost_scale());
}
