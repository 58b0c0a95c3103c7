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
//! rows makes plain decoding cheap per token (the 1.5B does 4 sessions' steps in ~3 steps' time).
//! Each verdict says what its call held ([`BatchShare`]); the picker keeps the other sessions' rows
//! R and the tokens they gained G (averaged over recent rounds) and maximises the whole call's rate,
//! (G + E(k)) / (C(R, k) + d) against (G + 1) / c(R) for a plain step. What k drafts add to a shared
//! call is not c(R + k) − c(R): llama.cpp, with one KV stream per session, evaluates a call in
//! micro-batches holding the same number of tokens of every sequence in them, so the first row of
//! each session goes in one pass and a session's drafts in further passes of their own — its k
//! drafts cost about what a lone block of k − 1 drafts costs, C(R, k) = c(R) + c(k − 1) (measured at
//! concurrency 4 on the EPYC host: a call of four plain steps 158 ms, with one session's single
//! draft 208 ms, with two drafts 258 ms; a plain step alone 50 ms). Alone (R = 0) the block is
//! one pass, C = c(k), and this is the single-session rule above; between the two, C is
//! interpolated. A plain shared call is an efficient batch, so beside three other sessions a draft
//! rarely pays: on FACTS.md's curve even near-certain blocks of 8 do not, beside one other session
//! they still do.
//!
//! The curve is measured once and drifts (on a shared VM, ~10% steeper within an hour), so each
//! verify call that served the session alone corrects it ([`drift`]): the excess of a block over a
//! plain step is scaled by what the generation's blocks took against what the curve said, and the
//! corrected curve prices every choice and keeps the floor's books.
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
use drift::CurveDrift;

mod drift;

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
/// maximising the whole call's rate (G + E(k)) / (C(R, k) + d).
pub fn best_shared_length(rates: &[f64], curve: &CostCurve, drafter_cost: f64, others: OtherLoad) -> usize {
    let (r, g) = (others.rows.max(0.0), others.gained.max(0.0));
    let (mut best_k, mut best_score) = (0, (g + 1.0) / curve.cost_at(r));
    let (mut expected, mut run) = (1.0, 1.0);
    for (i, &a) in rates.iter().enumerate() {
        run *= a;
        expected += run;
        let k = i + 1;
        let score = (g + expected) / (shared_cost(curve, r, k) + drafter_cost);
        if score > best_score * (1.0 + 1e-9) {
            (best_k, best_score) = (k, score);
        }
    }
    best_k
}

/// C(R, k): steps of a decode call holding `r` rows of other sessions and this session's block of
/// `k` drafts (k ≥ 1). With other sessions in the call, the block's drafts go in micro-batches of
/// their own after the one holding every session's first row (llama.cpp splits a call over
/// separate KV streams into passes with equal tokens per sequence): c(R) + c(k − 1). Alone, one
/// pass: c(k). Under one other row on average, the two are mixed by the share of shared calls.
fn shared_cost(curve: &CostCurve, r: f64, k: usize) -> f64 {
    let alone = curve.cost_at(r + k as f64);
    let passes = curve.cost_at(r) + curve.cost(k - 1);
    let shared = r.min(1.0);
    (1.0 - shared) * alone + shared * passes
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
    /// What its verify calls said about the cost curve.
    drift: CurveDrift,
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
    /// The curve as measured (at start-up or from the cache).
    measured: CostCurve,
    /// What the generation's own verify calls say about it, and the curve corrected by them: the
    /// one every decision and the floor's books use.
    drift: CurveDrift,
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
        let drift = learnt.map_or_else(|| CurveDrift::new(&curve), |l| l.drift);
        Self {
            curve: drift.apply(&curve),
            measured: curve,
            drift,
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
            drift: self.drift,
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

    /// The factor the generation's verify calls put on a block's excess over a plain step (1: the
    /// measured curve holds).
    pub(crate) fn cost_scale(&self) -> f64 {
        self.drift.scale()
    }

    /// Learns from the decode call that served this round, which took `seconds`: what the other
    /// sessions put into it, from the call's `batch` and this session's own part of it (`sent`
    /// drafts, `accepted` of them), and, when it served this session alone, what a block costs. A
    /// verdict without a batch (a verifier that does not report one) counts as alone.
    pub(crate) fn observe_call(&mut self, batch: BatchShare, sent: usize, accepted: usize, seconds: f64) {
        self.drift.observe(&self.measured, batch, sent, seconds);
        self.curve = self.drift.apply(&self.measured);
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
mod tests;
