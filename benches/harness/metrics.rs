//! Summaries per (suite, mode, transport, concurrency): throughput, speedup over `ar` paired per
//! prompt, acceptance, draft lengths, latency percentiles, the drafter/verifier time split, and how
//! the output compares with `ar`'s.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::compare::{ar_references, compare_samples, reference_of};
use super::modes::{BenchMode, Contender, Transport};
use super::sample::{Sample, rate};

/// The cell a summary covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CellKey {
    /// Suite name.
    pub suite: String,
    /// Decoding strategy: a Duet mode or a peer.
    pub mode: Contender,
    /// In process or through the server.
    pub transport: Transport,
    /// Generations at once.
    pub concurrency: usize,
}

impl CellKey {
    /// The cell of a sample.
    pub fn of(s: &Sample) -> Self {
        Self { suite: s.suite.clone(), mode: s.mode, transport: s.transport, concurrency: s.concurrency }
    }
}

/// Everything the report says about one cell.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Which cell.
    #[serde(flatten)]
    pub key: CellKey,
    /// Prompts measured.
    pub prompts: usize,
    /// Tokens generated, all prompts.
    pub generated_tokens: usize,
    /// Tokens generated per second of wall time with `concurrency` generations running: all tokens
    /// over the summed wall time of the concurrent groups.
    pub throughput_tok_s: f64,
    /// Mean over prompts of one generation's tokens per second.
    pub request_tok_s_mean: f64,
    /// Median over prompts of (this mode's tok/s) / (`ar`'s tok/s on the same prompt).
    pub speedup_median: Option<f64>,
    /// The lowest of those ratios.
    pub speedup_worst: Option<f64>,
    /// Median over prompts of the decoding-phase speedup: this mode's rate after the first token,
    /// (tokens − 1) / (e2e − TTFT), over `ar`'s on the same prompt. The prompt's evaluation is the
    /// same work in every mode, so this is what the drafter changes, without the prefill's noise.
    pub decode_speedup_median: Option<f64>,
    /// The lowest of those ratios.
    pub decode_speedup_worst: Option<f64>,
    /// Median over prompts of (this contender's tok/s) / (the baseline peer's tok/s on the same
    /// prompt and concurrency): how it compares with the engine a user would run instead (the
    /// first `--peer`).
    pub vs_peer_median: Option<f64>,
    /// The lowest of those ratios.
    pub vs_peer_worst: Option<f64>,
    /// Mean accepted length τ: tokens per verification round, the verifier's own token included.
    pub mean_accepted_length: Option<f64>,
    /// Draft tokens accepted / drafted.
    pub acceptance_rate: Option<f64>,
    /// For each block position, the share of drafts reaching it that were accepted up to it.
    pub acceptance_by_position: Vec<f64>,
    /// Mean draft length over verification rounds (0 for a round without a draft).
    pub draft_length_mean: Option<f64>,
    /// Sessions whose blocks shared a verifier call with this mode's rounds, on average (1 alone;
    /// in process only).
    pub sessions_per_call: Option<f64>,
    /// How often each draft length was chosen.
    pub draft_length_counts: BTreeMap<usize, usize>,
    /// Time to first token, median and 99th percentile, seconds.
    pub ttft_p50_s: f64,
    /// See `ttft_p50_s`.
    pub ttft_p99_s: f64,
    /// Gap between successive token deliveries, pooled over prompts: median, seconds.
    pub itl_p50_s: Option<f64>,
    /// See `itl_p50_s`: 99th percentile.
    pub itl_p99_s: Option<f64>,
    /// Time per output token after the first: (e2e − TTFT) / (tokens − 1), mean over prompts.
    pub tpot_mean_s: Option<f64>,
    /// End-to-end latency of a generation, median, seconds.
    pub e2e_p50_s: f64,
    /// See `e2e_p50_s`: 99th percentile.
    pub e2e_p99_s: f64,
    /// Share of end-to-end time spent in the drafter (in process only).
    pub drafter_share: Option<f64>,
    /// Share of end-to-end time spent in the verifier, prompt included (in process only; with
    /// concurrency above 1 it includes waiting for the verifier thread).
    pub verifier_share: Option<f64>,
    /// Generations whose output equals `ar`'s on the same prompt, transport and concurrency (for
    /// `ar` itself: `ar`'s at concurrency 1).
    pub identical_to_ar: usize,
    /// Generations compared with `ar`.
    pub compared_with_ar: usize,
    /// Mean over prompts of the share of `ar`'s positions holding the same token.
    pub positional_agreement_mean: Option<f64>,
    /// Mean over prompts of 1 − edit distance / longer length against `ar`'s output.
    pub edit_similarity_mean: Option<f64>,
    /// Median first position differing from `ar` among the differing outputs.
    pub first_difference_median: Option<f64>,
}

/// The `p`-th percentile (0–100) by linear interpolation between order statistics; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// Tokens per second after the first token; `None` for generations of one token or less.
fn decode_rate(s: &Sample) -> Option<f64> {
    let after_first = s.e2e_s - s.ttft_s;
    (s.generated_tokens > 1 && after_first > 0.0).then(|| (s.generated_tokens - 1) as f64 / after_first)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Acceptance share at each block position from per-round draft and accepted lengths.
pub fn acceptance_by_position(draft_lengths: &[usize], accepted_lengths: &[usize]) -> Vec<f64> {
    let longest = draft_lengths.iter().copied().max().unwrap_or(0);
    (0..longest)
        .map(|i| {
            let pairs = draft_lengths.iter().zip(accepted_lengths).filter(|(d, _)| **d > i);
            let (reached, kept) = pairs.fold((0usize, 0usize), |(r, k), (_, a)| (r + 1, k + usize::from(*a > i)));
            kept as f64 / reached.max(1) as f64
        })
        .collect()
}

/// One summary per cell, in a stable order (suite, mode, transport, concurrency). `group_walls`
/// holds each cell's summed wall time of its concurrent groups; `baseline` names the peer the
/// `vs_peer` ratios are taken against.
pub fn summarize(samples: &[Sample], group_walls: &HashMap<CellKey, f64>, baseline: Option<&str>) -> Vec<Summary> {
    let refs = ar_references(samples);
    let baseline_rates: HashMap<(&str, &str, usize), f64> = samples
        .iter()
        .filter(|s| s.mode.is_peer() && baseline == Some(s.mode.label()))
        .map(|s| ((s.suite.as_str(), s.prompt.as_str(), s.concurrency), s.tokens_per_s))
        .collect();
    let mut cells: BTreeMap<CellKey, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        cells.entry(CellKey::of(s)).or_default().push(s);
    }
    cells
        .into_iter()
        .map(|(key, cell)| {
            let generated_tokens: usize = cell.iter().map(|s| s.generated_tokens).sum();
            let wall = group_walls.get(&key).copied().unwrap_or_else(|| cell.iter().map(|s| s.e2e_s).sum());
            let mut speedups = Vec::new();
            let mut decode_speedups = Vec::new();
            let mut sims = Vec::new();
            let vs_peer: Vec<f64> = cell
                .iter()
                .filter_map(|s| {
                    let theirs = baseline_rates.get(&(s.suite.as_str(), s.prompt.as_str(), s.concurrency))?;
                    (*theirs > 0.0 && s.tokens_per_s > 0.0).then(|| s.tokens_per_s / theirs)
                })
                .collect();
            for s in &cell {
                let Some(ar) = reference_of(&refs, s, s.concurrency) else {
                    continue;
                };
                if ar.tokens_per_s > 0.0 && s.tokens_per_s > 0.0 {
                    speedups.push(s.tokens_per_s / ar.tokens_per_s);
                }
                // The unverified mode delivers whole blocks, so its "decoding phase" is a block or two.
                if let (true, Some(mine), Some(theirs)) = (s.mode != BenchMode::Diffusion, decode_rate(s), decode_rate(ar)) {
                    decode_speedups.push(mine / theirs);
                }
                // `ar` beside other sessions is compared with `ar` alone, as the lossless check does.
                let reference = if s.mode == BenchMode::Ar { reference_of(&refs, s, 1) } else { Some(ar) };
                sims.extend(reference.and_then(|r| compare_samples(r, s)));
            }

            let stats: Vec<_> = cell.iter().filter_map(|s| s.stats.as_ref()).collect();
            let verified = key.mode != BenchMode::Diffusion && !stats.is_empty();
            let rounds: usize = stats.iter().map(|s| s.rounds).sum();
            let drafted: usize = stats.iter().map(|s| s.drafted).sum();
            let accepted: usize = stats.iter().map(|s| s.accepted).sum();
            let draft_lengths: Vec<usize> = stats.iter().flat_map(|s| s.draft_lengths.iter().copied()).collect();
            let accepted_lengths: Vec<usize> = stats.iter().flat_map(|s| s.accepted_lengths.iter().copied()).collect();
            let mut draft_length_counts = BTreeMap::new();
            for &d in &draft_lengths {
                *draft_length_counts.entry(d).or_insert(0) += 1;
            }
            // Through the server only the accepted/rejected totals come back.
            let server_accepted: usize = cell.iter().filter_map(|s| s.accepted_prediction_tokens).sum();
            let server_rejected: usize = cell.iter().filter_map(|s| s.rejected_prediction_tokens).sum();
            let acceptance_rate = if verified && drafted > 0 {
                Some(accepted as f64 / drafted as f64)
            } else if server_accepted + server_rejected > 0 {
                Some(server_accepted as f64 / (server_accepted + server_rejected) as f64)
            } else {
                None
            };
            let e2e_total: f64 = cell.iter().filter(|s| s.stats.is_some()).map(|s| s.e2e_s).sum();
            let share = |f: fn(&crate::engine::Stats) -> f64| {
                (!stats.is_empty() && e2e_total > 0.0).then(|| stats.iter().map(|s| f(s)).sum::<f64>() / e2e_total)
            };

            let ttft: Vec<f64> = cell.iter().map(|s| s.ttft_s).collect();
            let e2e: Vec<f64> = cell.iter().map(|s| s.e2e_s).collect();
            let itl: Vec<f64> = cell.iter().flat_map(|s| s.itl_s.iter().copied()).collect();
            let tpot: Vec<f64> = cell
                .iter()
                .filter(|s| s.generated_tokens > 1)
                .map(|s| (s.e2e_s - s.ttft_s) / (s.generated_tokens - 1) as f64)
                .collect();
            let differing: Vec<f64> = sims.iter().filter_map(|m| m.first_difference).map(|d| d as f64).collect();
            Summary {
                prompts: cell.len(),
                generated_tokens,
                throughput_tok_s: rate(generated_tokens, wall),
                request_tok_s_mean: mean(&cell.iter().map(|s| s.tokens_per_s).collect::<Vec<_>>()).unwrap_or(0.0),
                speedup_median: (!speedups.is_empty()).then(|| percentile(&speedups, 50.0)),
                speedup_worst: speedups.iter().copied().reduce(f64::min),
                decode_speedup_median: (!decode_speedups.is_empty()).then(|| percentile(&decode_speedups, 50.0)),
                decode_speedup_worst: decode_speedups.iter().copied().reduce(f64::min),
                vs_peer_median: (!vs_peer.is_empty()).then(|| percentile(&vs_peer, 50.0)),
                vs_peer_worst: vs_peer.iter().copied().reduce(f64::min),
                mean_accepted_length: (verified && rounds > 0).then(|| (rounds + accepted) as f64 / rounds as f64),
                acceptance_rate,
                acceptance_by_position: if verified { acceptance_by_position(&draft_lengths, &accepted_lengths) } else { Vec::new() },
                draft_length_mean: (key.mode != BenchMode::Ar && !draft_lengths.is_empty())
                    .then(|| draft_lengths.iter().sum::<usize>() as f64 / draft_lengths.len() as f64),
                draft_length_counts,
                sessions_per_call: (verified && rounds > 0)
                    .then(|| stats.iter().map(|s| s.batch_blocks).sum::<usize>() as f64 / rounds as f64),
                ttft_p50_s: percentile(&ttft, 50.0),
                ttft_p99_s: percentile(&ttft, 99.0),
                itl_p50_s: (!itl.is_empty()).then(|| percentile(&itl, 50.0)),
                itl_p99_s: (!itl.is_empty()).then(|| percentile(&itl, 99.0)),
                tpot_mean_s: mean(&tpot),
                e2e_p50_s: percentile(&e2e, 50.0),
                e2e_p99_s: percentile(&e2e, 99.0),
                drafter_share: share(|s| s.drafter_s),
                verifier_share: if key.mode == BenchMode::Diffusion { None } else { share(|s| s.verifier_s) },
                identical_to_ar: sims.iter().filter(|m| m.identical).count(),
                compared_with_ar: sims.len(),
                positional_agreement_mean: mean(&sims.iter().map(|m| m.positional_agreement).collect::<Vec<_>>()),
                edit_similarity_mean: mean(&sims.iter().map(|m| m.edit_similarity).collect::<Vec<_>>()),
                first_difference_median: (!differing.is_empty()).then(|| percentile(&differing, 50.0)),
                key,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::sample::Output;
    use crate::engine::Stats;

    fn sample(prompt: &str, mode: BenchMode, e2e_s: f64, tokens: &[u32], stats: Option<Stats>) -> Sample {
        Sample {
            suite: "s".into(),
            prompt: prompt.into(),
            mode: mode.into(),
            transport: Transport::InProcess,
            concurrency: 1,
            generated_tokens: tokens.len(),
            stop: "max_tokens".into(),
            ttft_s: 0.1,
            e2e_s,
            tokens_per_s: rate(tokens.len(), e2e_s),
            deliveries: 2,
            itl_s: vec![0.2, 0.4],
            stats,
            accepted_prediction_tokens: None,
            rejected_prediction_tokens: None,
            text: String::new(),
            output: Output::Tokens(tokens.to_vec()),
        }
    }

    #[test]
    fn a_peer_is_compared_by_text_with_duets_ar_and_the_others_against_the_baseline_peer() {
        let mut ar = sample("a", BenchMode::Ar, 1.0, &[1, 2, 3, 4], None);
        ar.text = "abcd".into();
        let peer = |name: &'static str, e2e_s: f64, text: &str| {
            let mut s = sample("a", BenchMode::Ar, e2e_s, &[0, 0, 0, 0], None);
            (s.mode, s.transport, s.text, s.output) = (Contender::Peer(name), Transport::Server, text.into(), Output::Text(text.into()));
            s
        };
        let samples = vec![ar, peer("plain", 2.0, "abcd"), peer("spec", 4.0, "abXd")];
        let sums = summarize(&samples, &HashMap::new(), Some("plain"));
        let get = |c: Contender| sums.iter().find(|s| s.key.mode == c).expect("summary");
        let (ar, plain, spec) = (get(BenchMode::Ar.into()), get(Contender::Peer("plain")), get(Contender::Peer("spec")));
        assert_eq!((ar.vs_peer_median, plain.vs_peer_median, spec.vs_peer_median), (Some(2.0), Some(1.0), Some(0.5)));
        assert_eq!((plain.speedup_median, plain.identical_to_ar, plain.compared_with_ar), (Some(0.5), 1, 1));
        assert_eq!((spec.identical_to_ar, spec.first_difference_median), (0, Some(2.0)));
        assert!(crate::bench::check_lossless(&samples).is_empty(), "a peer's different output is reported, never a failure");
    }

    #[test]
    fn percentiles_interpolate_between_order_statistics() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), 5.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn acceptance_by_position_counts_only_drafts_that_reach_the_position() {
        // Drafts of 4, 2 and 0 tokens; 3, 0 and 0 accepted.
        let a = acceptance_by_position(&[4, 2, 0], &[3, 0, 0]);
        assert_eq!(a, vec![0.5, 0.5, 1.0, 0.0]);
    }

    #[test]
    fn speedup_is_paired_per_prompt_and_reports_median_and_worst() {
        let t = [1u32, 2, 3, 4];
        let hybrid_stats = Stats {
            rounds: 2,
            drafted: 8,
            accepted: 2,
            draft_lengths: vec![4, 4],
            accepted_lengths: vec![2, 0],
            drafter_s: 0.1,
            verifier_s: 0.3,
            ..Stats::default()
        };
        let samples = vec![
            sample("a", BenchMode::Ar, 2.0, &t, None),
            sample("a", BenchMode::HybridNgram, 1.0, &t, Some(hybrid_stats.clone())),
            sample("b", BenchMode::Ar, 1.0, &t, None),
            sample("b", BenchMode::HybridNgram, 2.0, &t, Some(hybrid_stats.clone())),
            sample("c", BenchMode::Ar, 1.0, &t, None),
            sample("c", BenchMode::HybridNgram, 0.8, &t, Some(hybrid_stats)),
        ];
        let sums = summarize(&samples, &HashMap::new(), None);
        let hybrid = sums.iter().find(|s| s.key.mode == BenchMode::HybridNgram).expect("hybrid summary");
        assert_eq!(hybrid.speedup_median, Some(1.25));
        assert_eq!(hybrid.speedup_worst, Some(0.5));
        // After the TTFT of 0.1 s, 3 tokens: prompt b decodes in 0.9 s (ar) against 1.9 s (hybrid),
        // prompt c in 0.9 s against 0.7 s; the prefill is left out of both.
        let worst = hybrid.decode_speedup_worst.expect("decode speedup");
        assert!((worst - 0.9 / 1.9).abs() < 1e-9, "prompt b: {worst}");
        assert!((hybrid.decode_speedup_median.expect("median") - 0.9 / 0.7).abs() < 1e-9);
        assert_eq!(hybrid.mean_accepted_length, Some(2.0));
        assert_eq!(hybrid.acceptance_rate, Some(0.25));
        assert_eq!(hybrid.acceptance_by_position, vec![0.5, 0.5, 0.0, 0.0]);
        assert_eq!(hybrid.draft_length_counts.get(&4), Some(&6));
        assert_eq!(hybrid.identical_to_ar, 3);
        assert!((hybrid.drafter_share.expect("share") - 0.3 / 3.8).abs() < 1e-9);
        let ar = sums.iter().find(|s| s.key.mode == BenchMode::Ar).expect("ar summary");
        assert_eq!(ar.speedup_median, Some(1.0));
        assert_eq!(ar.throughput_tok_s, 12.0 / 4.0);
    }

    #[test]
    fn a_repeated_run_must_reproduce_the_first_runs_outputs() {
        let first = vec![sample("a", BenchMode::HybridNgram, 1.0, &[1, 2, 3], None)];
        let same = vec![sample("a", BenchMode::HybridNgram, 0.7, &[1, 2, 3], None)];
        let other = vec![sample("a", BenchMode::HybridNgram, 0.7, &[1, 2, 4], None)];
        assert!(super::super::runner::same_outputs(&first, &same).is_ok());
        let e = super::super::runner::same_outputs(&first, &other).expect_err("differs");
        assert!(e.to_string().contains("s/a in mode hybrid-ngram"), "{e}");
    }

    #[test]
    fn throughput_uses_the_wall_time_of_concurrent_groups() {
        let samples = vec![sample("a", BenchMode::Ar, 2.0, &[1, 2], None), sample("b", BenchMode::Ar, 2.0, &[1, 2], None)];
        let key = CellKey::of(&samples[0]);
        let sums = summarize(&samples, &HashMap::from([(key, 2.0)]), None);
        assert_eq!(sums[0].throughput_tok_s, 2.0);
        assert_eq!(sums[0].request_tok_s_mean, 1.0);
    }
}
