//! The cost curve as the generation finds it.
//!
//! The curve is measured once (at start-up, or read from the cache) and on a shared VM it drifts:
//! on the 2-core EPYC host a block of 3 cost 2.96 steps by the bench's curve and 3.3–3.6 an hour
//! later, and an edit whose blocks took 4.2 steps each where the curve said 2.9 fell to 0.91× of
//! plain decoding — the policy and the floor guard had both believed the blocks cheap. Every round
//! the engine times is a measurement too, so the generation corrects the curve with its own calls.
//!
//! The model is one factor on a block's excess over a plain step: c'(k) = 1 + s (c(k) − 1), with s
//! the ratio of the excess the generation's blocks took (their time over the plain step's, minus 1)
//! to the excess the curve predicted for them, and the plain step the average of the generation's
//! own plain steps. Both start from the curve (as if [`PRIOR_EXCESS`] steps of blocks had matched
//! it), forget exponentially, and count only calls that served this session alone: a shared call's
//! time belongs to every session in it. A call far outside [`PLAUSIBLE`] of the prediction is not
//! a measurement of this curve (a scripted verifier in tests answers in microseconds; a paused VM
//! takes seconds) and is ignored.

use duet_verifier::BatchShare;

use super::CostCurve;

/// Steps of block excess the curve's own figures count for before the first measured block.
const PRIOR_EXCESS: f64 = 2.0;
/// Plain steps the curve's own step time counts for before the first measured one.
const PRIOR_STEPS: f64 = 2.0;
/// Per measured block, how much of the past is kept.
const BLOCK_MEMORY: f64 = 0.8;
/// Per measured plain step, how much of the past is kept.
const STEP_MEMORY: f64 = 0.9;
/// The factor on the excess stays within [1 / MAX_SCALE, MAX_SCALE].
const MAX_SCALE: f64 = 2.5;
/// A call counts only within this factor of the time the curve predicts for it.
const PLAUSIBLE: f64 = 3.0;

/// What the generation's own calls say about the cost curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CurveDrift {
    /// Plain steps' seconds and their count, both decayed.
    step_sum: f64,
    steps: f64,
    /// Block excess over a plain step as measured and as the curve predicted, in steps, decayed.
    measured: f64,
    predicted: f64,
}

impl CurveDrift {
    /// No measurements yet: the curve as it was measured.
    pub(crate) fn new(curve: &CostCurve) -> Self {
        Self { step_sum: curve.step_s * PRIOR_STEPS, steps: PRIOR_STEPS, measured: PRIOR_EXCESS, predicted: PRIOR_EXCESS }
    }

    /// The plain step's time by the generation's own steps, in seconds.
    pub(crate) fn step_s(&self) -> f64 {
        self.step_sum / self.steps
    }

    /// The factor on a block's excess over a plain step.
    pub(crate) fn scale(&self) -> f64 {
        (self.measured / self.predicted.max(1e-9)).clamp(1.0 / MAX_SCALE, MAX_SCALE)
    }

    /// `curve` as the measurements say it is now.
    pub(crate) fn apply(&self, curve: &CostCurve) -> CostCurve {
        let s = self.scale();
        let costs = curve.costs.iter().enumerate().map(|(k, &c)| if k == 0 { 1.0 } else { 1.0 + s * (c - 1.0) }).collect();
        CostCurve { step_s: self.step_s(), costs }
    }

    /// Learns from a round that sent `sent` drafts to a call that took `seconds`, judged against
    /// `curve` (the measured one, uncorrected). Shared and implausible calls teach nothing.
    pub(crate) fn observe(&mut self, curve: &CostCurve, batch: BatchShare, sent: usize, seconds: f64) {
        if batch.blocks > 1 || !seconds.is_finite() {
            return;
        }
        let step = self.step_s();
        if sent == 0 {
            if plausible(seconds, curve.step_s) {
                self.step_sum = STEP_MEMORY * self.step_sum + seconds;
                self.steps = STEP_MEMORY * self.steps + 1.0;
            }
            return;
        }
        let predicted = curve.cost(sent);
        if predicted <= 1.0 || !plausible(seconds, predicted * step) || !plausible(step, curve.step_s) {
            return;
        }
        self.measured = BLOCK_MEMORY * self.measured + (seconds / step - 1.0).max(0.0);
        self.predicted = BLOCK_MEMORY * self.predicted + (predicted - 1.0);
    }
}

/// Whether a measured time is within [`PLAUSIBLE`] of the expected one.
fn plausible(seconds: f64, expected: f64) -> bool {
    expected > 0.0 && seconds >= expected / PLAUSIBLE && seconds <= expected * PLAUSIBLE
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALONE: BatchShare = BatchShare { blocks: 1, rows: 1, gained: 1 };

    /// The EPYC host's curve as the bench measured it, with a 45 ms plain step.
    fn measured() -> CostCurve {
        let step = 0.045;
        let c = [1.0, 2.02, 2.47, 2.99, 3.55, 4.68, 5.78];
        CostCurve::from_times(&[0, 1, 2, 3, 4, 6, 8], &c.map(|x| x * step)).expect("curve")
    }

    #[test]
    fn blocks_dearer_than_the_curve_steepen_it() {
        let curve = measured();
        let mut d = CurveDrift::new(&curve);
        assert_eq!(d.apply(&curve).costs, curve.costs, "no measurement, no change");
        // Blocks of 3 taking 4.2 steps, as the edit that fell to 0.91× did.
        for _ in 0..6 {
            d.observe(&curve, ALONE, 0, 0.045);
            d.observe(&curve, ALONE, 3, 4.2 * 0.045);
        }
        let now = d.apply(&curve);
        assert!((now.cost(3) - 4.2).abs() < 0.25, "{}", now.cost(3));
        assert!(now.cost(1) > 2.4 && now.cost(8) > 7.5, "the whole excess scales: {:?}", now.costs);
        assert_eq!(now.cost(0), 1.0);
    }

    #[test]
    fn blocks_cheaper_than_the_curve_flatten_it_and_the_plain_step_follows_its_own_time() {
        let curve = measured();
        let mut d = CurveDrift::new(&curve);
        for _ in 0..30 {
            d.observe(&curve, ALONE, 0, 0.050);
            d.observe(&curve, ALONE, 4, 0.050 * 3.0);
        }
        let now = d.apply(&curve);
        assert!((now.step_s - 0.050).abs() < 0.001, "{}", now.step_s);
        assert!((now.cost(4) - 3.0).abs() < 0.1, "{}", now.cost(4));
    }

    #[test]
    fn shared_and_implausible_calls_teach_nothing() {
        let curve = measured();
        let mut d = CurveDrift::new(&curve);
        let before = d;
        // A call that carried four sessions' blocks, a scripted verifier's microseconds, a pause.
        d.observe(&curve, BatchShare { blocks: 4, rows: 12, gained: 6 }, 3, 0.4);
        d.observe(&curve, ALONE, 0, 2e-6);
        d.observe(&curve, ALONE, 3, 3e-6);
        d.observe(&curve, ALONE, 3, 5.0);
        d.observe(&curve, ALONE, 2, f64::NAN);
        assert_eq!(d, before);
        // A verifier that does not report its batch counts as alone.
        d.observe(&curve, BatchShare::default(), 3, 4.0 * 0.045);
        assert!(d.scale() > 1.0);
    }

    #[test]
    fn the_correction_is_bounded() {
        let curve = measured();
        let mut d = CurveDrift::new(&curve);
        for _ in 0..50 {
            d.observe(&curve, ALONE, 1, 0.045 * 1.01);
        }
        assert!((d.scale() - 1.0 / MAX_SCALE).abs() < 1e-9, "{}", d.scale());
        assert!(d.apply(&curve).cost(1) > 1.0);
    }
}
