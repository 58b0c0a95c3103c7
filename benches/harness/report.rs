//! What a run writes: `results.json` (configuration, machine, summaries, cost curve, mismatches,
//! every sample) and the markdown table printed on stdout.

use std::fmt::Write as _;

use serde::Serialize;

use super::compare::Mismatch;
use super::cost::CostPoint;
use super::hops::HopFailure;
use crate::grpc::hops::HopRow;
use super::metrics::Summary;
use super::modes::BenchMode;
use super::sample::Sample;

/// The machine a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Operating system.
    pub os: String,
    /// 1-minute load average when the run started and ended. The end's includes the run's own
    /// compute threads; see [`Machine::was_busy`].
    pub load_average: [Option<f64>; 2],
    /// The run's own compute threads (the verifier's), counted in the load average at the end.
    pub own_threads: u32,
}

impl Machine {
    /// Reads what Linux tells about the machine (fields stay empty elsewhere).
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once([':', '='])).map(|(_, v)| v.trim().trim_matches('"').to_string())
        };
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let kib: f64 = field(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0.0);
        Self {
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            os: field(&read("/etc/os-release"), "PRETTY_NAME").unwrap_or_else(|| std::env::consts::OS.to_string()),
            load_average: [load_average(), None],
            own_threads: 0,
        }
    }

    /// Records the load average at the end of a run that computed on `own_threads` threads.
    pub fn finish(&mut self, own_threads: u32) {
        self.load_average[1] = load_average();
        self.own_threads = own_threads;
    }

    /// Whether other work shared the CPU: the load average exceeded the core count when the run
    /// started, or, at the end, what the run's own threads do not explain kept more than half the
    /// cores busy. (A run on every core of a 2-core machine ends near 2 by itself; counting that
    /// as busy flagged every quiet run.)
    pub fn was_busy(&self) -> bool {
        let cores = self.cores as f64;
        let start = self.load_average[0].is_some_and(|l| l > cores);
        let end = self.load_average[1].is_some_and(|l| l - f64::from(self.own_threads) > 0.5 * cores);
        start || end
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// A suite as the run used it.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteInfo {
    /// Name (file stem).
    pub name: String,
    /// File.
    pub path: String,
    /// Prompts measured.
    pub prompts: usize,
}

/// A mode that did not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The mode.
    pub mode: BenchMode,
    /// Why.
    pub reason: String,
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// The command line.
    pub command: String,
    /// UTC start time.
    pub started_utc: String,
    /// Duet's version.
    pub duet_version: String,
    /// Verifier model file and description.
    pub verifier: String,
    /// Whether the verifier returned hidden states (for a conditioned diffusion drafter); this
    /// makes prompt evaluation of every mode about 15% dearer.
    pub verifier_features: bool,
    /// Diffusion drafter checkpoint, when loaded.
    pub drafter_checkpoint: Option<String>,
    /// AR drafting model, when loaded.
    pub drafting_model: Option<String>,
    /// CPU threads of the llama.cpp models.
    pub threads: u32,
    /// Element types of the verifier's KV cache (keys-values).
    pub kv_cache: String,
    /// `RAYON_NUM_THREADS` (candle's threads for the diffusion drafter), when set.
    pub rayon_threads: Option<String>,
    /// Draft block size.
    pub block_size: usize,
    /// How hybrid rounds chose their draft length.
    pub draft_length: super::DraftLength,
    /// The cost curve file the hybrid modes drafted by instead of the measured one (`--draft-curve`).
    pub draft_curve: Option<String>,
    /// How the modes of a prompt shared the machine at concurrency 1.
    pub pairing: super::Pairing,
    /// Prompts of the first suite in the network-hop measurement (`--hops`; 0: not measured).
    pub hop_prompts: usize,
    /// `--quick`.
    pub quick: bool,
    /// Modes measured.
    pub modes: Vec<BenchMode>,
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Server base URL, when measured through one.
    pub server: Option<String>,
    /// Other engines' servers measured beside Duet's modes (`--peer`); the first is the baseline
    /// of the `vs_peer` ratios.
    pub peers: Vec<super::peers::Peer>,
    /// Whether in-process generations ran.
    pub in_process: bool,
    /// Suites.
    pub suites: Vec<SuiteInfo>,
}

/// The whole `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Set-up.
    pub config: RunConfig,
    /// Machine.
    pub machine: Machine,
    /// Modes that did not run.
    pub skipped: Vec<Skipped>,
    /// One per (suite, mode, transport, concurrency).
    pub summaries: Vec<Summary>,
    /// The verifier cost curve c(k).
    pub cost_curve: Vec<CostPoint>,
    /// How far apart identical prompt evaluations were between the modes of a prompt: the run's
    /// own noise floor.
    pub prefill_spread: Option<super::noise::PrefillSpread>,
    /// Greedy outputs that differ from `ar`'s; any fails the run.
    pub mismatches: Vec<Mismatch>,
    /// What the network hops cost: per mode, one row in process and one split over loopback gRPC
    /// (`ms_per_round` of the split row minus the in-process row's is the hops' price per round).
    pub hops: Vec<HopRow>,
    /// Why the hop phase has no rows; a mismatch fails the run like `mismatches`.
    pub hops_failure: Option<HopFailure>,
    /// Plot files written, relative to the output folder.
    pub plots: Vec<String>,
    /// Every generation.
    pub samples: Vec<Sample>,
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite()).map_or_else(|| "–".to_string(), f)
}

fn ms(s: f64) -> String {
    format!("{:.0}", s * 1000.0)
}

/// The comparison with the peers: per suite and concurrency, every contender's throughput and its
/// speed against the baseline peer paired per prompt. Duet's modes are taken in process when they
/// ran there (the peers' HTTP streaming costs them well under a millisecond per token).
fn peers_table(o: &mut String, r: &Report) {
    let Some(baseline) = r.config.peers.first() else { return };
    let duet_transport = super::Transport::beside_peers(r.config.in_process);
    let mut rows: Vec<&Summary> = r.summaries.iter().filter(|s| s.key.mode.is_peer() || s.key.transport == duet_transport).collect();
    let _ = writeln!(
        o,
        "\nAgainst the peers (`--peer`; Duet's modes {}): speed over {} paired per prompt, median and worst\n",
        duet_transport.label(),
        baseline.name
    );
    let _ = writeln!(o, "| suite | conc | engine | tok/s | × {} med / worst | TTFT p50 ms | e2e p50 ms | accepted | identical to ar |", baseline.name);
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    // Duet's modes before the peers within a suite and level (`Contender` orders them so).
    rows.sort_by(|a, b| (&a.key.suite, a.key.concurrency, a.key.mode).cmp(&(&b.key.suite, b.key.concurrency, b.key.mode)));
    for s in rows {
        let same = if s.key.mode == BenchMode::Ar && s.key.concurrency == 1 {
            "reference".to_string()
        } else {
            format!("{}/{}", s.identical_to_ar, s.compared_with_ar)
        };
        let _ = writeln!(
            o,
            "| {} | {} | {}{} | {:.1} | {} / {} | {} | {} | {} | {} |",
            s.key.suite,
            s.key.concurrency,
            if s.key.mode.is_peer() { "" } else { "duet " },
            s.key.mode.label(),
            s.throughput_tok_s,
            opt(s.vs_peer_median, |x| format!("{x:.2}×")),
            opt(s.vs_peer_worst, |x| format!("{x:.2}×")),
            ms(s.ttft_p50_s),
            ms(s.e2e_p50_s),
            opt(s.acceptance_rate, |x| format!("{:.0}%", x * 100.0)),
            same
        );
    }
}

/// The markdown table (and notes) printed on stdout.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.config;
    let m = &r.machine;
    let _ = writeln!(o, "## duet bench — {}", c.verifier);
    let _ = writeln!(
        o,
        "\n{} ({} cores, {} GiB, {}), {} threads, {} KV cache, block {} ({}; {}), {}; load average {} → {}{}\n",
        m.cpu,
        m.cores,
        m.memory_gib,
        m.os,
        c.threads,
        c.kv_cache,
        c.block_size,
        match c.draft_length {
            super::DraftLength::CostAware => "cost-aware draft length",
            super::DraftLength::Fixed => "fixed draft length",
        },
        match c.pairing {
            super::Pairing::Lockstep => "the modes of a prompt group run in lockstep, timed by their own turns",
            super::Pairing::Sequential => "the modes run one after another",
        },
        c.started_utc,
        opt(m.load_average[0], |l| format!("{l:.2}")),
        opt(m.load_average[1], |l| format!("{l:.2}")),
        if m.was_busy() { " — BUSY MACHINE: timings are noise" } else { "" }
    );
    let _ = writeln!(o, "`{}`\n", c.command);
    let _ = writeln!(
        o,
        "| suite | mode | via | conc | tok/s | speedup med | speedup worst | decode speedup med / worst | τ | accepted | acceptance by position | draft len | sessions / call | TTFT p50 ms | ITL p50 / p99 ms | e2e p50 ms | drafter / verifier | vs ar |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &r.summaries {
        let by_pos: Vec<String> = s.acceptance_by_position.iter().take(8).map(|a| format!("{a:.2}")).collect();
        let vs_ar = if s.key.mode == BenchMode::Ar && s.key.concurrency == 1 {
            "reference".to_string()
        } else if s.key.mode.is_lossless() {
            format!("identical {}/{}", s.identical_to_ar, s.compared_with_ar)
        } else {
            format!(
                "identical {}/{}, agree {}, edit sim {}, 1st diff {}",
                s.identical_to_ar,
                s.compared_with_ar,
                opt(s.positional_agreement_mean, |a| format!("{:.0}%", a * 100.0)),
                opt(s.edit_similarity_mean, |a| format!("{a:.2}")),
                opt(s.first_difference_median, |a| format!("{a:.0}"))
            )
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {} |",
            s.key.suite,
            s.key.mode.label(),
            s.key.transport.label(),
            s.key.concurrency,
            s.throughput_tok_s,
            opt(s.speedup_median, |x| format!("{x:.2}×")),
            opt(s.speedup_worst, |x| format!("{x:.2}×")),
            opt(s.decode_speedup_median, |x| format!("{x:.2}×")),
            opt(s.decode_speedup_worst, |x| format!("{x:.2}×")),
            opt(s.mean_accepted_length, |x| format!("{x:.2}")),
            opt(s.acceptance_rate, |x| format!("{:.0}%", x * 100.0)),
            if by_pos.is_empty() { "–".to_string() } else { by_pos.join(" ") },
            opt(s.draft_length_mean, |x| format!("{x:.1}")),
            opt(s.sessions_per_call, |x| format!("{x:.1}")),
            ms(s.ttft_p50_s),
            opt(s.itl_p50_s, ms),
            opt(s.itl_p99_s, ms),
            ms(s.e2e_p50_s),
            opt(s.drafter_share, |x| format!("{:.0}%", x * 100.0)),
            opt(s.verifier_share, |x| format!("{:.0}%", x * 100.0)),
            vs_ar
        );
    }
    peers_table(&mut o, r);
    if !r.cost_curve.is_empty() {
        let points: Vec<String> = r.cost_curve.iter().map(|p| format!("c({})={:.2}", p.k, p.c)).collect();
        let step = r.cost_curve.iter().find(|p| p.k == 0).map_or(0.0, |p| p.median_s);
        let _ = writeln!(o, "\nVerifier cost curve (time of verifying k drafts / one step of {} ms): {}", ms(step), points.join(", "));
    }
    if let Some(f) = &c.draft_curve {
        let _ = writeln!(o, "\nThe hybrid modes drafted by the curve in {f} (`--draft-curve`), not by the one measured above.");
    }
    if let Some(n) = &r.prefill_spread {
        let _ = writeln!(
            o,
            "\nNoise floor: the prompt's evaluation is the same work in every verified mode; alone, its time differed between \
             the modes of a prompt by {:.1}% in the median and at most {:.1}% ({}; {} prompts).",
            n.median * 100.0,
            n.worst * 100.0,
            n.worst_prompt,
            n.prompts
        );
    }
    if !r.hops.is_empty() {
        let suite = c.suites.first().map_or("", |s| s.name.as_str());
        let _ = writeln!(
            o,
            "\nNetwork hops ({} prompt(s) of {suite}, each generated in process and split over loopback gRPC; per round after the \
             prompt; hops = split − in process):\n\n{}",
            c.hop_prompts,
            crate::grpc::hops::markdown(&r.hops).trim_end()
        );
    }
    match &r.hops_failure {
        Some(f) if f.mismatch => {
            let _ = writeln!(o, "\n**LOSSLESS CHECK FAILED (network hops): {}**", f.message);
        }
        Some(f) => {
            let _ = writeln!(o, "\n**Network hops not measured: {}**", f.message);
        }
        None => {}
    }
    for s in &r.skipped {
        let _ = writeln!(o, "\nSkipped {}: {}", s.mode.label(), s.reason);
    }
    if r.mismatches.is_empty() {
        let _ = writeln!(o, "\nLossless check: every greedy hybrid output equals ar's.");
    } else {
        let _ = writeln!(o, "\n**LOSSLESS CHECK FAILED: {} greedy output(s) differ from ar:**", r.mismatches.len());
        for mm in &r.mismatches {
            let _ = writeln!(o, "- {mm}");
        }
    }
    o
}

/// A UTC timestamp (`2026-11-28 07:30:00 UTC`) from the system clock.
pub fn utc_now() -> String {
    utc_from_unix(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Formats seconds since the Unix epoch as a UTC timestamp.
pub fn utc_from_unix(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_become_utc_dates() {
        assert_eq!(utc_from_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_from_unix(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn a_run_is_busy_when_other_work_loads_the_cpu_not_when_its_own_threads_do() {
        let machine = |start: f64, end: f64| Machine {
            cpu: String::new(),
            cores: 2,
            memory_gib: 0.0,
            os: String::new(),
            load_average: [Some(start), Some(end)],
            own_threads: 2,
        };
        // A quiet run on both cores ends near a load of 2 by itself.
        assert!(!machine(0.3, 2.05).was_busy());
        // Something else kept a core busy throughout, or was already running.
        assert!(machine(0.3, 3.2).was_busy());
        assert!(machine(2.5, 2.0).was_busy());
    }
}
