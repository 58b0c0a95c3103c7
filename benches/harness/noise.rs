//! The run's own noise floor: every verified mode evaluates a prompt the same way (same tokens, same
//! verifier, same chunks), so the spread of their times to first token on one prompt is what this
//! machine's timing noise alone does to a comparison.

use std::collections::HashMap;

use serde::Serialize;

use super::sample::Sample;

/// How far apart the verified modes' times to first token were on the same prompt, alone
/// (concurrency 1: above it, a session's first token also waits for the others' blocks).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrefillSpread {
    /// Prompts (per transport) with at least two verified modes.
    pub prompts: usize,
    /// Median over those prompts of slowest / fastest − 1.
    pub median: f64,
    /// Largest such spread.
    pub worst: f64,
    /// The prompt with the largest spread (`suite/id`).
    pub worst_prompt: String,
}

/// The spread of identical prompt evaluations, or `None` when no prompt ran in two verified modes.
pub fn prefill_spread(samples: &[Sample]) -> Option<PrefillSpread> {
    let mut by_prompt: HashMap<(String, String, super::modes::Transport), Vec<f64>> = HashMap::new();
    for s in samples.iter().filter(|s| s.concurrency == 1 && s.mode.is_lossless() && s.ttft_s > 0.0) {
        by_prompt.entry((s.suite.clone(), s.prompt.clone(), s.transport)).or_default().push(s.ttft_s);
    }
    let mut spreads: Vec<(f64, String)> = by_prompt
        .into_iter()
        .filter(|(_, t)| t.len() >= 2)
        .map(|((suite, prompt, _), t)| {
            let (lo, hi) = t.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            (hi / lo - 1.0, format!("{suite}/{prompt}"))
        })
        .collect();
    if spreads.is_empty() {
        return None;
    }
    spreads.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = spreads.len();
    let median = if n % 2 == 1 { spreads[n / 2].0 } else { (spreads[n / 2 - 1].0 + spreads[n / 2].0) / 2.0 };
    let (worst, worst_prompt) = spreads.pop()?;
    Some(PrefillSpread { prompts: n, median, worst, worst_prompt })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::bench::modes::BenchMode;
    use crate::bench::sample::test_sample;

    fn sample(prompt: &str, mode: BenchMode, concurrency: usize, ttft_s: f64) -> Sample {
        let mut s = test_sample(prompt, mode, concurrency, &[0], ttft_s, ttft_s);
        s.tokens_per_s = 0.0;
        s
    }

    #[test]
    fn the_spread_counts_verified_modes_alone_and_names_the_worst_prompt() {
        let samples = vec![
            sample("a", BenchMode::Ar, 1, 1.0),
            sample("a", BenchMode::HybridNgram, 1, 1.1),
            sample("b", BenchMode::Ar, 1, 2.0),
            sample("b", BenchMode::HybridDiffusion, 1, 2.5),
            sample("b", BenchMode::HybridNgram, 1, 2.2),
            // The unverified mode and concurrency 4 do not count.
            sample("a", BenchMode::Diffusion, 1, 9.0),
            sample("a", BenchMode::HybridNgram, 4, 9.0),
            sample("c", BenchMode::Ar, 1, 1.0),
        ];
        let s = prefill_spread(&samples).unwrap();
        assert_eq!(s.prompts, 2);
        assert!((s.worst - 0.25).abs() < 1e-9);
        assert_eq!(s.worst_prompt, "s/b");
        assert!((s.median - 0.175).abs() < 1e-9);
        assert!(prefill_spread(&samples[..1]).is_none());
    }
}
