//! Cost-aware draft length: how many of the drafter's tokens to send to the verifier each round.
//!
//! On a CPU, verifying k drafts costs c(k) single decoding steps with c(k) well above 1 (FACTS.md:
//! about 4.4 for k = 8 on the 1.5B). A round that sends k drafts gains in expectation
//! E(k) = 1 + Σ_{i=1..k} Π_{j≤i} a_j tokens, where a_j is the chance that draft j is accepted once
//! the drafts before it were, and costs c(k) steps plus the drafter's own time d (in steps). The
//! policy sends the k that maximises E(k) / (c(k) + d), and none (k = 0, a plain step at cost 1)
//! when no length beats plain decoding.
//!
//! The a_j come from the drafter's per-position confidences — its own estimate of a_j, or
//! [`PRIOR_RATE`] for a position it gives none — scaled by a calibration learnt during the
//! generation: the ratio of accepted drafts to the confidence the drafter put on the drafts the
//! verifier judged, forgotten exponentially so that it follows the text. The calibration starts at
//! 1, as if [`PRIOR_WEIGHT`] drafts had been accepted as often as predicted: a drafter's estimate
//! (the n-gram drafter's grows with how far back its match agrees) is taken at its word until
//! verdicts say otherwise.
//!
//! When the policy keeps choosing k = 0 it learns nothing, so after [`PROBE_EVERY`] rounds without a
//! draft, the first draft the drafter is at least [`PRIOR_RATE`] sure of is sent alone as a probe (a
//! doubted one would only teach the calibration about drafts it never sends); and a drafter that is
//! expensive to call is not called between probes once [`SKIP_AFTER`] rounds in a row gained nothing
//! from it, nor again on the rounds after a probe round whose draft it doubted.
//! A probe that gains nothing doubles the wait before the next one (up to [`MAX_PROBE_EVERY`]), and
//! makes it at least long enough that probes cost at most [`PROBE_BUDGET`] of the time: a probe costs
//! c(1) − 1 steps plus the drafter's call, which is 0.5 steps on one CPU and 1.0 on another (where
//! two rows cost two steps), so a fixed doubling paid twice as much for exploration on the second.
//! A drafter that cannot follow the text thus costs little instead of a probe's price every
//! [`PROBE_EVERY`] rounds.
//!
//! Expectation is not a floor: a block the calibration rates highly can still be rejected whole.
//! [`super::floor`] caps each round's block at what the generation can lose and still keep
//! [`super::floor::FLOOR`] of plain decoding's speed by the cost curve, and skips the drafter call
//! when not even one draft is affordable.
//!
//! Under concurrency the verifier evaluates the blocks of several sessions in one decode call, so a
//! session's drafts lengthen every session's step, and a step that already carries other sessions'
//! rows makes plain decoding cheap per token (the 1.5B does 4 sessions' steps in ~2.9 steps' time).
//! Each verdict says what its call held ([`BatchShare`]); the picker keeps the other sessions' rows
//! R and the tokens they gained G (averaged over recent rounds) and maximises the whole call's rate,
//! (G + E(k)) / (c(R + k) + d) against (G + 1) / c(R) for a plain step. Alone, R = G = 0 and this is
//! the single-session rule above; with three other sessions stepping plainly, a first draft must be
//! accepted ~3 times in 4 instead of ~1 in 2 to pay.
//!
//! A generation also starts from what the previous generation with the same drafter learnt (a
//! [`PolicyMemory`] the service keeps per drafter): the drafter's cost and whether it had stopped
//! paying, and then how long it waited between probes. Without it, every request would pay again for
//! the [`SKIP_AFTER`] calls in which an expensive drafter that never hits proves it, and for the
//! probes after [`PROBE_EVERY`] and 2 × [`PROBE_EVERY`] rounds that it fails again. The calibration is not carried over: acceptance
//! belongs to the text (an n-gram drafter that fails on chat copies whole lines of an edit), and a
//! pessimistic start would cost a good text far more than an optimistic one costs a bad text.

use std::sync::Mutex;

use duet_verifier::BatchShare;
use serde::{Deserialize, Serialize};

use super::floor::LossGuard;

/// Rounds without a sent draft after which a round sends a single draft anyway (a probe).
pub const PROBE_EVERY: usize = 16;
/// Longest wait between probes, in rounds without a sent draft, after probes that gained nothing.
pub const MAX_PROBE_EVERY: usize = 128;
/// Consecutive rounds without an accepted draft after which an expensive drafter is only called
/// on probe rounds.
pub const SKIP_AFTER: usize = 4;
/// Largest share of the time that probes which gain nothing may cost: after such a probe, the next
/// waits at least its cost in steps divided by this many rounds.
pub const PROBE_BUDGET: f64 = 0.02;
/// A drafter whose calls cost at least this share of a decoding step counts as expensive.
pub const EXPENSIVE_DRAFTER: f64 = 0.02;
/// Acceptance assumed for a draft position whose drafter gives no confidence.
pub const PRIOR_RATE: f64 = 0.7;
/// Weight of the calibration's starting point, in judged drafts at [`PRIOR_RATE`].
pub const PRIOR_WEIGHT: f64 = 2.0;
/// Per judged draft, how much of the calibration's past is kept.
const MEMORY: f64 = 0.95;
/// No draft is ever assumed certain: the expected gain of long blocks stays finite.
const MAX_RATE: f64 = 0.98;

/// The verifier's cost curve: c(k) = time(verify k drafts) / time(one plain step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostCurve {
    /// Seconds of one plain step (k = 0) when the curve was measured.
    pub step_s: f64,
    /// c(k) for k = 0, 1, …; `costs[0]` is 1.
    pub costs: Vec<f64>,
}

impl CostCurve {
    /// A curve from measured verification times of blocks of `sizes` drafts (`sizes` must include
    /// 0); sizes in between are interpolated linearly.
    pub fn from_times(sizes: &[usize], times: &[f64]) -> Result<Self, String> {
        let mut points: Vec<(usize, f64)> = sizes.iter().copied().zip(times.iter().copied()).collect();
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        let step_s = match points.first() {
            Some(&(0, t)) if t.is_finite() && t > 0.0 => t,
            _ => return Err("the measured sizes must include 0 with a positive time".into()),
        };
        if points.iter().any(|p| !(p.1.is_finite() && p.1 > 0.0)) {
            return Err(format!("measured times must be positive, got {times:?}"));
        }
        let last = points.last().map_or(0, |p| p.0);
        let mut costs = Vec::with_capacity(last + 1);
        for w in points.windows(2) {
            let ((k0, t0), (k1, t1)) = (w[0], w[1]);
            for k in k0..k1 {
                costs.push((t0 + (t1 - t0) * (k - k0) as f64 / (k1 - k0) as f64) / step_s);
            }
        }
        costs.push(points.last().map_or(step_s, |p| p.1) / step_s);
        // A block never costs less than a shorter one: a dip is timing noise (on a busy machine,
        // a slow plain step makes every block look cheap), so the curve is made non-decreasing.
        for k in 1..costs.len() {
            costs[k] = costs[k].max(costs[k - 1]);
        }
        Ok(Self { step_s, costs })
    }

    /// c(k); past the measured range, extended along the last measured slope.
    pub fn cost(&self, k: usize) -> f64 {
        let n = self.costs.len();
        match self.costs.get(k) {
            Some(&c) => c,
            None if n >= 2 => self.costs[n - 1] + (self.costs[n - 1] - self.costs[n - 2]).max(0.0) * (k + 1 - n) as f64,
            None => self.costs.last().copied().unwrap_or(1.0) * (k + 1) as f64,
        }
    }

    /// c at a fractional draft length (an average load), interpolated between whole lengths.
    pub fn cost_at(&self, k: f64) -> f64 {
        let k = k.max(0.0);
        let lo = k.floor();
        let (c0, c1) = (self.cost(lo as usize), self.cost(lo as usize + 1));
        c0 + (c1 - c0) * (k - lo)
    }

    /// Largest draft length measured.
    pub fn max_len(&self) -> usize {
        self.costs.len().saturating_sub(1)
    }
}

/// How the engine picks the draft length each round.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum DraftPolicy {
    /// Send everything the drafter proposes (up to the block size).
    #[default]
    Fixed,
    /// Send the length that maximises expected tokens per unit of time under this cost curve.
    CostAware(CostCurve),
}

/// What the other sessions put into the verifier's decode calls, per call on average.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OtherLoad {
    /// Tokens their blocks add to a call.
    pub rows: f64,
    /// Tokens a call gives them.
    pub gained: f64,
}

impl OtherLoad {
    /// A session alone on the verifier.
    pub const ALONE: Self = Self { rows: 0.0, gained: 0.0 };
}

/// The length maximising E(k) / (c(k) + d) for the conditional acceptance chances `rates` (one per
/// draft position, k ≤ `rates.len()`) and a drafter cost `drafter_cost` in steps; 0 when nothing
/// beats a plain step. Ties go to the shorter block.
pub fn best_length(rates: &[f64], curve: &CostCurve, drafter_cost: f64) -> usize {
    best_shared_length(rates, curve, drafter_cost, OtherLoad::ALONE)
}

/// [`best_length`] for a session whose block shares decode calls with `others`: the length
/// maximising the whole call's rate (G + E(k)) / (c(R + k) + d).
pub fn best_shared_length(rates: &[f64], curve: &CostCurve, drafter_cost: f64, others: OtherLoad) -> usize {
    let (r, g) = (others.rows.max(0.0), others.gained.max(0.0));
    let (mut best_k, mut best_score) = (0, (g + 1.0) / curve.cost_at(r));
    let (mut expected, mut run) = (1.0, 1.0);
    for (i, &a) in rates.iter().enumerate() {
        run *= a;
        expected += run;
        let k = i + 1;
        let score = (g + expected) / (curve.cost_at(r + k as f64) + drafter_cost);
        if score > best_score * (1.0 + 1e-9) {
            (best_k, best_score) = (k, score);
        }
    }
    best_k
}

/// What a finished generation learnt about its drafter, for the next one to start from.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Learnt {
    /// Mean drafter time per call, in steps.
    drafter_cost: Option<f64>,
    /// Whether the drafter had stopped paying (its last rounds gained nothing).
    idle: bool,
    /// The wait between probes it had reached.
    probe_every: usize,
}

/// What earlier generations learnt about one drafter, shared by the generations that use it (one
/// per drafter kind in a service). Only the policy's speed depends on it, never the output.
#[derive(Debug, Default)]
pub struct PolicyMemory {
    learnt: Mutex<Option<Learnt>>,
}

impl PolicyMemory {
    /// An empty memory: the first generation starts from the prior.
    pub fn new() -> Self {
        Self::default()
    }

    fn recall(&self) -> Option<Learnt> {
        *self.learnt.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store(&self, learnt: Learnt) {
        *self.learnt.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(learnt);
    }
}

/// The drafter's confidence in draft `i`, [`PRIOR_RATE`] where it gives none.
fn confidence(confidences: &[f32], i: usize) -> f64 {
    confidences.get(i).map_or(PRIOR_RATE, |&c| f64::from(c))
}

/// The per-generation state of the cost-aware policy.
#[derive(Debug, Clone)]
pub(crate) struct LengthPicker {
    curve: CostCurve,
    /// Accepted drafts and the confidence the drafter put on the judged drafts, both decayed.
    hits: f64,
    predicted: f64,
    /// Consecutive rounds in which no draft token was accepted (none sent, or all rejected).
    idle_rounds: usize,
    /// Consecutive rounds that sent no draft.
    since_sent: usize,
    /// Rounds without a sent draft before the next probe; doubles after a probe that gains nothing.
    probe_every: usize,
    /// Whether the draft chosen last was a probe.
    probing: bool,
    /// Mean drafter time per call, in steps (exponentially averaged).
    drafter_cost: Option<f64>,
    /// What the other sessions put into the calls this one's blocks shared (averaged).
    others: OtherLoad,
    /// The generation's books by the cost curve: no block may take it below the floor.
    guard: LossGuard,
}

/// Per round, how much of the other sessions' averaged load is kept: sessions come and go.
const LOAD_MEMORY: f64 = 0.5;

impl LengthPicker {
    /// A picker for a new generation, starting from what `memory` holds (the prior when empty).
    pub(crate) fn new(curve: CostCurve, memory: Option<&PolicyMemory>) -> Self {
        let learnt = memory.and_then(PolicyMemory::recall);
        Self {
            curve,
            hits: PRIOR_RATE * PRIOR_WEIGHT,
            predicted: PRIOR_RATE * PRIOR_WEIGHT,
            idle_rounds: if learnt.is_some_and(|l| l.idle) { SKIP_AFTER } else { 0 },
            since_sent: 0,
            probe_every: learnt.filter(|l| l.idle).map_or(PROBE_EVERY, |l| l.probe_every.clamp(PROBE_EVERY, MAX_PROBE_EVERY)),
            probing: false,
            drafter_cost: learnt.and_then(|l| l.drafter_cost),
            others: OtherLoad::ALONE,
            guard: LossGuard::default(),
        }
    }

    /// Hands what this generation learnt to the next ones.
    pub(crate) fn remember(&self, memory: &PolicyMemory) {
        memory.store(Learnt {
            drafter_cost: self.drafter_cost,
            idle: self.idle_rounds >= SKIP_AFTER,
            probe_every: self.probe_every,
        });
    }

    /// Whether to call the drafter this round: always, unless it is expensive and has not paid
    /// for a while (then only on probe rounds), or the floor could not afford a call and one draft.
    pub(crate) fn wants_draft(&self) -> bool {
        let affordable = self.first_draft_cost() <= self.guard.affordable();
        affordable && !(self.is_expensive() && self.idle_rounds >= SKIP_AFTER && !self.is_probe_round())
    }

    fn is_expensive(&self) -> bool {
        self.drafter_cost.is_some_and(|d| d >= EXPENSIVE_DRAFTER)
    }

    /// Steps a round with a single draft costs: c(1) plus a drafter call.
    fn first_draft_cost(&self) -> f64 {
        self.curve.cost(1) + self.drafter_cost.unwrap_or(0.0)
    }

    fn is_probe_round(&self) -> bool {
        self.since_sent >= self.probe_every
    }

    /// Conditional acceptance chances for a draft with these confidences (missing: [`PRIOR_RATE`]).
    pub(crate) fn rates(&self, confidences: &[f32], len: usize) -> Vec<f64> {
        let scale = self.hits / self.predicted.max(1e-9);
        (0..len).map(|i| (confidence(confidences, i) * scale).clamp(0.0, MAX_RATE)).collect()
    }

    /// The number of drafts to send out of `offered`, given the drafter took `drafter_s` seconds.
    pub(crate) fn choose(&mut self, confidences: &[f32], offered: usize, drafter_s: f64) -> usize {
        let d = drafter_s / self.curve.step_s;
        self.drafter_cost = Some(match self.drafter_cost {
            Some(avg) => 0.8 * avg + 0.2 * d,
            None => d,
        });
        self.probing = false;
        self.guard.spend(d);
        // The longest block whose total rejection the floor can afford.
        let affordable = self.guard.affordable();
        let offered = (1..=offered).take_while(|&k| self.curve.cost(k) <= affordable).count();
        if offered == 0 {
            return 0;
        }
        let k = best_shared_length(&self.rates(confidences, offered), &self.curve, d, self.others);
        if k != 0 || !self.is_probe_round() {
            return k;
        }
        // A probe is a draft the drafter is at least as sure of as the prior: one it doubts teaches
        // the calibration about drafts the policy would not send anyway. A cheap drafter is asked
        // every round, so the probe waits for its first sure draft; an expensive one would then be
        // called every round for nothing, so its wait starts again.
        if confidence(confidences, 0) >= PRIOR_RATE {
            self.probing = true;
            1
        } else {
            if self.is_expensive() {
                self.since_sent = 0;
            }
            0
        }
    }

    /// Learns what the other sessions put into the decode call that served this round, from the
    /// call's `batch` and this session's own part of it: `sent` drafts, `accepted` of them. A
    /// verdict without a batch (a verifier that does not report one) counts as alone.
    pub(crate) fn observe_batch(&mut self, batch: BatchShare, sent: usize, accepted: usize) {
        let rows = batch.rows.saturating_sub(sent + 1) as f64;
        let gained = batch.gained.saturating_sub(accepted + 1) as f64;
        self.others = OtherLoad {
            rows: LOAD_MEMORY * self.others.rows + (1.0 - LOAD_MEMORY) * rows,
            gained: LOAD_MEMORY * self.others.gained + (1.0 - LOAD_MEMORY) * gained,
        };
    }

    /// Rounds without a draft after which a probe's cost (c(1) − 1 steps plus a drafter call) is
    /// [`PROBE_BUDGET`] of their time.
    fn budgeted_wait(&self) -> usize {
        let cost = self.first_draft_cost() - 1.0;
        (cost.max(0.0) / PROBE_BUDGET).ceil() as usize
    }

    /// Learns from a round: `sent` drafts with these confidences, `accepted` of them accepted.
    /// Rounds that gained no draft token count towards the next probe.
    pub(crate) fn observe(&mut self, confidences: &[f32], sent: usize, accepted: usize) {
        self.guard.record(self.curve.cost(sent), accepted + 1);
        self.idle_rounds = if accepted > 0 { 0 } else { self.idle_rounds + 1 };
        self.since_sent = if sent > 0 { 0 } else { self.since_sent + 1 };
        if accepted > 0 {
            self.probe_every = PROBE_EVERY;
        } else if self.probing && sent > 0 {
            self.probe_every = (2 * self.probe_every).max(self.budgeted_wait()).min(MAX_PROBE_EVERY);
        }
        self.probing = false;
        // Judged drafts: the accepted ones and the first rejected one.
        for i in 0..(accepted + 1).min(sent) {
            let c = confidence(confidences, i);
            self.hits = MEMORY * self.hits + f64::from(u8::from(i < accepted));
            self.predicted = MEMORY * self.predicted + c;
        }
    }
}

#[cfg(test)]
mod tests {
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
        // Three other sessions stepping plainly: their rows make a plain step cheap per token.
        let busy = OtherLoad { rows: 3.0, gained: 3.0 };
        assert_eq!(best_shared_length(&[0.6; 8], &c, 0.0, OtherLoad::ALONE), best_length(&[0.6; 8], &c, 0.0));
        assert!(best_length(&[0.6; 8], &c, 0.0) > 0, "alone, 60% drafts pay");
        assert_eq!(best_shared_length(&[0.6; 8], &c, 0.0, busy), 0, "shared, they do not");
        assert!(best_shared_length(&[0.97; 8], &c, 0.0, busy) > 0, "near-certain drafts still pay");
        assert!(
            best_shared_length(&[0.9; 8], &c, 0.0, busy) < best_length(&[0.9; 8], &c, 0.0),
            "and blocks get shorter"
        );
    }

    #[test]
    fn the_picker_learns_the_other_sessions_load_from_its_verdicts() {
        let mut alone = LengthPicker::new(facts_curve(), None);
        let mut shared = alone.clone();
        for _ in 0..6 {
            alone.observe_batch(BatchShare { blocks: 1, rows: 1, gained: 1 }, 0, 0);
            // Four sessions in each call: this one's plain step and three others' plain steps.
            shared.observe_batch(BatchShare { blocks: 4, rows: 4, gained: 4 }, 0, 0);
        }
        assert!((shared.others.rows - 3.0).abs() < 0.1, "{:?}", shared.others);
        assert_eq!(alone.others, OtherLoad::ALONE);
        assert!(alone.choose(&[0.6; 8], 8, 0.0) > 0);
        assert_eq!(shared.choose(&[0.6; 8], 8, 0.0), 0);
        // A verifier that reports no batch leaves the session alone.
        shared.observe_batch(BatchShare::default(), 0, 0);
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
}
