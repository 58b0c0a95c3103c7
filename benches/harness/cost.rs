//! The verifier cost curve c(k): the time of one verification of k draft tokens (the pending token
//! plus k drafts in one decode call, rejected positions rolled back) over the time of a plain step
//! (k = 0). Speculation pays only where τ exceeds c(k), so this curve is what a draft-length policy
//! needs to know about the machine.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use duet_verifier::{TokenId, Verifier};
use serde::{Deserialize, Serialize};

use crate::engine::CostCurve;

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

/// Reads the curve `--draft-curve` names: a JSON object `{"step_s": …, "costs": [c(0), c(1), …]}`,
/// or what `duet models costs --json` prints (the curve in its `curve` field).
pub fn read_curve(path: &Path) -> anyhow::Result<CostCurve> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --draft-curve {}", path.display()))?;
    parse_curve(&text).with_context(|| format!("--draft-curve {}", path.display()))
}

fn parse_curve(text: &str) -> anyhow::Result<CostCurve> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum File {
        Report { curve: CostCurve },
        Bare(CostCurve),
    }
    let curve = match serde_json::from_str::<File>(text) {
        Ok(File::Report { curve } | File::Bare(curve)) => curve,
        Err(_) => bail!("expected a JSON object with `step_s` (seconds) and `costs` (c(0) = 1, c(1), …), or `duet models costs --json` output"),
    };
    if !(curve.step_s.is_finite() && curve.step_s > 0.0) {
        bail!("`step_s` must be a positive number of seconds, got {}", curve.step_s);
    }
    if curve.costs.first() != Some(&1.0) {
        let first = curve.costs.first().map_or_else(|| "an empty list".to_string(), |c| c.to_string());
        bail!("`costs` must start with c(0) = 1 (a plain step), got {first}");
    }
    let sizes: Vec<usize> = (0..curve.costs.len()).collect();
    let times: Vec<f64> = curve.costs.iter().map(|c| c * curve.step_s).collect();
    CostCurve::from_times(&sizes, &times).map_err(|e| anyhow::anyhow!("`costs`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draft_curve_is_read_bare_or_from_the_costs_report_and_checked() {
        let bare = parse_curve(r#"{"step_s": 0.045, "costs": [1.0, 1.5, 2.0]}"#).expect("bare");
        assert!((bare.cost(1) - 1.5).abs() < 1e-9 && (bare.cost(2) - 2.0).abs() < 1e-9, "{:?}", bare.costs);
        let report = parse_curve(r#"{"model": "m", "curve": {"step_s": 0.045, "costs": [1.0, 1.5]}, "batch_invariant": true}"#);
        assert_eq!(report.expect("report").max_len(), 1);
        for (bad, field) in [
            (r#"{"step_s": 0, "costs": [1.0, 1.5]}"#, "step_s"),
            (r#"{"step_s": 0.04, "costs": [2.0, 3.0]}"#, "costs"),
            (r#"{"step_s": 0.04, "costs": [1.0, -1.0]}"#, "costs"),
            (r#"[1, 2]"#, "step_s"),
        ] {
            let e = parse_curve(bad).expect_err(bad).to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}
