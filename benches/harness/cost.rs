//! The verifier cost curve c(k): the time of one verification of k draft tokens (the pending token
//! plus k drafts in one decode call, rejected positions rolled back) over the time of a plain step
//! (k = 0). Speculation pays only where τ exceeds c(k), so this curve is what a draft-length policy
//! needs to know about the machine.

use std::time::Instant;

use anyhow::Context as _;
use duet_verifier::{TokenId, Verifier};
use serde::Serialize;

use super::metrics::percentile;

/// One point of the curve.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostPoint {
    /// Draft tokens verified.
    pub k: usize,
    /// Median time of one verification, seconds.
    pub median_s: f64,
    /// `median_s` over the median time of a plain step.
    pub c: f64,
    /// Verifications timed.
    pub reps: usize,
}

/// Draft lengths measured by default.
pub const DEFAULT_KS: [usize; 10] = [0, 1, 2, 3, 4, 6, 8, 12, 16, 32];
/// Draft lengths measured with `--quick`.
pub const QUICK_KS: [usize; 5] = [0, 1, 2, 4, 8];

/// Measures the curve after prefilling `context`. The k-loop runs inside the repetition loop so
/// drift on the machine reaches every k alike. Drafts are tokens of the context in reverse order,
/// which the verifier almost always rejects at once, so each call costs a full block and a rollback.
pub fn measure(verifier: &Verifier, context: &[TokenId], ks: &[usize], reps: usize, mut tick: impl FnMut()) -> anyhow::Result<Vec<CostPoint>> {
    let mut session = verifier.open_session().context("opening a session for the cost curve")?;
    session.prefill(context).context("prefilling the cost-curve context")?;
    // Warm-up: the first decodes of a session pay for page faults and allocations.
    for _ in 0..2 {
        session.step()?;
    }
    let filler: Vec<TokenId> = context.iter().rev().copied().cycle().take(ks.iter().copied().max().unwrap_or(0)).collect();
    let mut times = vec![Vec::with_capacity(reps); ks.len()];
    for _ in 0..reps {
        for (i, &k) in ks.iter().enumerate() {
            if session.room() < k + 2 {
                session.prefill(context).context("re-prefilling the cost-curve context")?;
            }
            let t = Instant::now();
            session.verify(&filler[..k]).with_context(|| format!("verifying {k} draft tokens"))?;
            times[i].push(t.elapsed().as_secs_f64());
            tick();
        }
    }
    let medians: Vec<f64> = times.iter().map(|t| percentile(t, 50.0)).collect();
    let base = ks.iter().position(|&k| k == 0).map(|i| medians[i]).filter(|&b| b > 0.0);
    Ok(ks
        .iter()
        .zip(&medians)
        .map(|(&k, &median_s)| CostPoint { k, median_s, c: base.map_or(f64::NAN, |b| median_s / b), reps })
        .collect())
}
