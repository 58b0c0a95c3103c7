//! `duet bench`: the latency-comparison harness. It runs every decoding strategy — `ar` (the
//! verifier alone), `hybrid` with the diffusion drafter, with n-gram lookup and with a small AR
//! drafter (classic speculative decoding), and `diffusion` (the drafter alone, unverified) — on the
//! same verifier, prompts and threads in one run, and reports each one's throughput, speedup over
//! `ar` paired per prompt, acceptance, draft lengths, latencies and time split, in process and
//! through `duet serve`, at each concurrency level; plus the verifier cost curve c(k) and what the
//! network hops of a split deployment add per round (`--hops`). Other engines' servers join the
//! comparison as peers (`--peer`, [`peers`]): the engine a user would run instead, measured on the
//! same prompts in the same run.
//!
//! Fairness: every model loads once and serves every mode; prompts run in groups of `concurrency`,
//! and the modes of a group take turns round by round ([`lockstep`]; with `--pairing sequential` or
//! through a server, they run back to back, ar first), so drift on the machine reaches all modes
//! alike. Every mode is warmed up once before measuring.
//!
//! Truth: every greedy hybrid output is compared with `ar`'s on the same prompt; any difference is
//! printed loudly and fails the run (after the report is written). The lossy `diffusion` mode is
//! compared too, and its agreement with `ar` reported.
//!
//! Layout: the harness lives in `benches/harness/` (the repository keeps benchmark code under
//! `benches/`), compiled into the orchestrator library as `duet_orchestrator::bench` with a `#[path]`
//! attribute, because the `duet` binary that runs it is the orchestrator's.

mod compare;
mod cost;
mod hops;
pub mod load;
mod lockstep;
mod metrics;
mod modes;
mod noise;
mod peers;
mod plots;
mod report;
mod runner;
mod sample;
mod server;

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

pub use compare::{Mismatch, Similarity, check_lossless, similarity};
pub use cost::CostPoint;
pub use metrics::{CellKey, Summary, percentile, summarize};
pub use modes::{BenchMode, Contender, Transport};
pub use peers::Peer;
pub use report::{Machine, Report};
pub use runner::{Models, PreparedPrompt};
pub use sample::{Output, Sample};
pub use server::{Completion, ServerClient};

use crate::cli::{DiffusionArgs, ModelArgs};
use crate::suite;

/// Most generations at once.
pub const MAX_CONCURRENCY: usize = 16;
/// Tokens per prompt when its suite line gives none.
pub const DEFAULT_MAX_TOKENS: usize = 128;
/// `--quick`: prompts per suite.
pub const QUICK_PROMPTS: usize = 3;
/// `--quick`: most tokens per prompt.
pub const QUICK_MAX_TOKENS: usize = 32;
/// Most runs of one prompt group and mode (`--repeats`).
pub const MAX_REPEATS: usize = 10;

/// Flags of `duet bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A prompt suite: JSONL with one `{id, prompt | messages, max_tokens}` object per line. Repeat
    /// for several (benches/data/ has humaneval.jsonl after scripts/fetch-data.sh, edit.jsonl and
    /// chat.jsonl).
    #[arg(long = "suite", value_name = "FILE", required = true)]
    pub suites: Vec<PathBuf>,
    /// Modes to compare, comma-separated. `ar` always runs: it is the reference for speedups and
    /// for the lossless check.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ar,hybrid-diffusion,hybrid-ngram,hybrid-ar-model,diffusion")]
    pub modes: Vec<BenchMode>,
    /// Generations running at once, comma-separated levels (each on its own thread and verifier
    /// session; 1 to 16).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub concurrency: Vec<usize>,
    /// A short run: 3 prompts per suite, at most 32 tokens each, a short cost curve.
    #[arg(long)]
    pub quick: bool,
    /// Folder for results.json, results.md and the plots (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Measure at most N prompts of each suite (the first N) [default: all; 3 with --quick].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Runs of every prompt group in every mode (1 to 10), the modes taking turns; the fastest run
    /// counts, since interference on a shared machine only ever slows a run down. Every run must
    /// produce the same output as the first, or the bench fails.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// How the modes of a prompt group share the machine (in process): `lockstep` runs them at
    /// once, taking turns round by round (at concurrency c, a turn is one round of the mode's c
    /// generations, which share decode calls), each timed by its own turns, so that they meet the
    /// same machine speed; `sequential` runs them one after another. A level whose groups would hold
    /// more verifier sessions than it allows (concurrency × modes > 64) runs sequentially.
    #[arg(long, value_enum, default_value_t = Pairing::Lockstep)]
    pub pairing: Pairing,
    /// Most tokens per prompt (1 to 65536); a suite line's smaller `max_tokens` still applies
    /// [default: the suite line's, else 128; 32 with --quick].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Most draft tokens per round in the hybrid modes, and block length of the diffusion mode (1 to 256).
    #[arg(long, default_value_t = 8)]
    pub block_size: usize,
    /// How many drafts a hybrid round sends (in process): `cost-aware`, as `duet generate` by
    /// default, picks the length with the most expected tokens per unit of time under the cost curve
    /// this run measures (none when a plain step pays better); `fixed` sends everything proposed.
    #[arg(long, value_enum, default_value_t = DraftLength::CostAware)]
    pub draft_length: DraftLength,
    /// Draft by this cost curve instead of the one the run measures (which is still measured and
    /// reported): a JSON file `{"step_s": …, "costs": [1, c(1), …]}` or `duet models costs --json`
    /// output. Shows how the policy copes with a stale curve, or replays an older run's.
    #[arg(long, value_name = "FILE", conflicts_with = "server_only")]
    pub draft_curve: Option<PathBuf>,
    /// Also measure through a running `duet serve` at this base URL (e.g. http://127.0.0.1:8080):
    /// `POST /v1/completions`, streamed. The server should run the same models and threads.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Also measure another engine's OpenAI-compatible server, as NAME=URL[,JSON object]
    /// (repeatable; the URL ends at the first comma): every prompt group runs on it right after
    /// Duet's modes, streamed, greedy, with the same max tokens, and the JSON's fields are merged
    /// into each request (llama-server: `{"cache_prompt":false}`, so it evaluates every prompt).
    /// The first peer is the baseline of the "× peer" ratios. Its outputs are compared with Duet's
    /// `ar` and reported, never a failure. scripts/peers.sh starts stock llama-server's
    /// configurations and passes them here.
    #[arg(long = "peer", value_name = "NAME=URL[,JSON]", value_parser = peers::parse)]
    pub peers: Vec<Peer>,
    /// With --server, measure only through the server (the verifier still loads here, for the
    /// chat template and token counts).
    #[arg(long, requires = "server")]
    pub server_only: bool,
    /// Draft lengths k of the verifier cost curve c(k), comma-separated (0 is always added)
    /// [default: 0,1,2,3,4,6,8,12,16,32; 0,1,2,4,8 with --quick].
    #[arg(long, value_delimiter = ',')]
    pub cost_ks: Option<Vec<usize>>,
    /// Measure what the network hops cost per round: the first N prompts of the first suite in
    /// `ar`, `hybrid-ngram` (and `hybrid-diffusion` when it runs), in process and split over
    /// loopback gRPC, after the other modes; 0 turns it off. In process only (not with
    /// --server-only) [default: 4; 2 with --quick].
    #[arg(long, value_name = "N")]
    pub hops: Option<usize>,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

/// The draft-length policy of the hybrid modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DraftLength {
    /// The engine's cost-aware policy over the measured cost curve.
    CostAware,
    /// Every proposed draft, up to the block size.
    Fixed,
}

/// How the modes of one prompt group share the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairing {
    /// At once, taking turns round by round ([`lockstep`]).
    Lockstep,
    /// One after another.
    Sequential,
}

/// A suite ready to run.
#[derive(Debug)]
struct Suite {
    name: String,
    path: PathBuf,
    prompts: Vec<PreparedPrompt>,
}

/// Checks the flags; returns the modes (ar first, no repeats) and the concurrency levels (sorted).
fn checked(args: &BenchArgs) -> anyhow::Result<(Vec<BenchMode>, Vec<usize>)> {
    if let Some(c) = args.concurrency.iter().find(|c| !(1..=MAX_CONCURRENCY).contains(c)) {
        bail!("`--concurrency` values must be between 1 and {MAX_CONCURRENCY}, got {c}");
    }
    if !(1..=crate::engine::MAX_BLOCK_SIZE).contains(&args.block_size) {
        bail!("`--block-size` must be between 1 and {}, got {}", crate::engine::MAX_BLOCK_SIZE, args.block_size);
    }
    if let Some(m) = args.max_tokens.filter(|m| !(1..=crate::engine::MAX_TOKENS_LIMIT).contains(m)) {
        bail!("`--max-tokens` must be between 1 and {}, got {m}", crate::engine::MAX_TOKENS_LIMIT);
    }
    if args.limit == Some(0) {
        bail!("`--limit` must be at least 1, got 0");
    }
    if !(1..=MAX_REPEATS).contains(&args.repeats) {
        bail!("`--repeats` must be between 1 and {MAX_REPEATS}, got {}", args.repeats);
    }
    if args.draft_curve.is_some() && args.draft_length != DraftLength::CostAware {
        bail!("`--draft-curve` is the curve of the cost-aware draft length; it needs `--draft-length cost-aware`");
    }
    if let Some(k) = args.cost_ks.iter().flatten().find(|&&k| k > crate::engine::MAX_BLOCK_SIZE) {
        bail!("`--cost-ks` values must be at most {}, got {k}", crate::engine::MAX_BLOCK_SIZE);
    }
    let modes: Vec<BenchMode> = BenchMode::ALL.iter().copied().filter(|m| *m == BenchMode::Ar || args.modes.contains(m)).collect();
    peers::check_unique(&args.peers).map_err(anyhow::Error::msg)?;
    let mut conc = args.concurrency.clone();
    conc.sort_unstable();
    conc.dedup();
    if conc.is_empty() {
        bail!("`--concurrency` needs at least one level");
    }
    Ok((modes, conc))
}

/// Reads every suite file (before any model loads, so a bad file fails at once).
fn read_suites(args: &BenchArgs) -> anyhow::Result<Vec<(String, PathBuf, Vec<suite::SuitePrompt>)>> {
    let limit = args.limit.or(args.quick.then_some(QUICK_PROMPTS)).unwrap_or(usize::MAX);
    let mut out: Vec<(String, PathBuf, Vec<suite::SuitePrompt>)> = Vec::new();
    for path in &args.suites {
        let stem = path.file_stem().map_or_else(|| "suite".into(), |s| s.to_string_lossy().into_owned());
        let name = if out.iter().any(|(n, _, _)| *n == stem) { format!("{stem}-{}", out.len() + 1) } else { stem };
        let mut lines = suite::load(path)?;
        lines.truncate(limit);
        out.push((name, path.clone(), lines));
    }
    Ok(out)
}

/// Turns suite lines into prompts: full text (chat template applied) and tokens.
fn prepare_suites(
    args: &BenchArgs,
    read: Vec<(String, PathBuf, Vec<suite::SuitePrompt>)>,
    verifier: &duet_verifier::Verifier,
) -> anyhow::Result<Vec<Suite>> {
    let cap = args.max_tokens.or(args.quick.then_some(QUICK_MAX_TOKENS)).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for (name, path, lines) in read {
        let mut prompts = Vec::new();
        for p in &lines {
            let text = p.text(verifier).with_context(|| format!("{}: prompt {}", path.display(), p.id))?;
            let tokens = verifier.tokenize(&text, true).with_context(|| format!("{}: tokenizing prompt {}", path.display(), p.id))?;
            let max_tokens = p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(cap);
            if !(1..=crate::engine::MAX_TOKENS_LIMIT).contains(&max_tokens) {
                bail!("{}: prompt {}: `max_tokens` must be between 1 and {}, got {max_tokens}", path.display(), p.id, crate::engine::MAX_TOKENS_LIMIT);
            }
            prompts.push(PreparedPrompt { suite: name.clone(), id: p.id.clone(), text, tokens, max_tokens });
        }
        out.push(Suite { name, path, prompts });
    }
    Ok(out)
}

/// Loads the models the modes need; returns them with the modes that cannot run and why.
fn load_models(args: &BenchArgs, modes: &[BenchMode], sessions: u32, in_process: bool) -> anyhow::Result<(Models, Vec<report::Skipped>)> {
    let mut skipped = Vec::new();
    let wants = |m: BenchMode| modes.contains(&m);
    let diffusion = if wants(BenchMode::HybridDiffusion) || wants(BenchMode::Diffusion) { Some(args.diffusion.load_model()?) } else { None };
    let checkpoint = args.diffusion.checkpoint_path().display().to_string();
    let conditioned = diffusion.as_ref().and_then(|m| m.feature_dim());
    if wants(BenchMode::Diffusion) && conditioned.is_some() {
        skipped.push(report::Skipped {
            mode: BenchMode::Diffusion,
            reason: format!(
                "the drafter {checkpoint} is conditioned on the verifier's hidden states, so it cannot draft without the \
                 verifier; pass a standalone --drafter-checkpoint to measure diffusion-only decoding"
            ),
        });
    }
    let mut verifier = args.models.load_verifier(sessions, false)?;
    let info = verifier.info().clone();
    if let Some(m) = &diffusion {
        m.vocab().check_verifier(info.n_vocab).with_context(|| format!("pairing drafter {checkpoint} with verifier {}", info.path.display()))?;
    }
    if let (true, Some(dim)) = (wants(BenchMode::HybridDiffusion), conditioned) {
        if dim == info.n_embd as usize {
            // Hidden states on for every mode, so all share one verifier (see RunConfig::verifier_features).
            drop(verifier);
            verifier = args.models.load_verifier(sessions, true)?;
        } else {
            skipped.push(report::Skipped {
                mode: BenchMode::HybridDiffusion,
                reason: format!(
                    "the drafter {checkpoint} is conditioned on hidden states of width {dim}, but the verifier {} has width {}; \
                     use the verifier it was trained for or a standalone --drafter-checkpoint",
                    info.description, info.n_embd
                ),
            });
        }
    }
    let drafting_model = if wants(BenchMode::HybridArModel) && in_process { Some(args.models.load_drafter_model(sessions)?) } else { None };
    let features = verifier_features(diffusion.as_deref(), &verifier) && wants(BenchMode::HybridDiffusion);
    let models = Models {
        verifier,
        features,
        diffusion,
        sampler: args.diffusion.sampler()?,
        hints: args.diffusion.draft_hints,
        drafting_model,
        draft_policy: crate::engine::DraftPolicy::Fixed,
        policy_memories: Default::default(),
    };
    Ok((models, skipped))
}

fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(char::is_whitespace) || a.is_empty() { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails the run when any greedy output differs from `ar`'s, naming each one.
pub fn verdict(mismatches: &[Mismatch], out: &Path) -> anyhow::Result<()> {
    if mismatches.is_empty() {
        return Ok(());
    }
    for m in mismatches {
        eprintln!("MISMATCH: {m}");
    }
    bail!(
        "{} greedy output(s) differ from ar: the lossless check failed (details in {})",
        mismatches.len(),
        out.join("results.json").display()
    )
}

/// Runs `duet bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (modes, levels) = checked(&args)?;
    let suite_lines = read_suites(&args)?;
    let draft_curve = args.draft_curve.as_deref().map(cost::read_curve).transpose()?;
    let mut machine = Machine::detect();
    let started_utc = report::utc_now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating --out {}", args.out.display()))?;
    let in_process = !args.server_only;
    let mut sessions = *levels.last().unwrap_or(&1) as u32;
    if args.pairing == Pairing::Lockstep {
        // Every mode of a prompt group holds its sessions at once.
        let most = levels.iter().filter(|&&c| lockstep::fits(c, modes.len())).map(|&c| c * modes.len()).max();
        sessions = sessions.max(most.unwrap_or(0) as u32);
    }
    let (mut models, skipped) = load_models(&args, &modes, sessions, in_process)?;
    let modes: Vec<BenchMode> = modes.into_iter().filter(|m| !skipped.iter().any(|s| s.mode == *m)).collect();
    for s in &skipped {
        eprintln!("duet bench: skipping {}: {}", s.mode.label(), s.reason);
    }
    let info = models.verifier.info().clone();
    eprintln!("duet bench: verifier {} ({}) loaded", info.description, info.path.display());
    let suites = prepare_suites(&args, suite_lines, &models.verifier)?;
    // Requests name the model the server lists (its `--served-model-name`, by default the file's).
    let client = match args.server.as_deref() {
        Some(url) => Some(ServerClient::new(url).with_model(&ServerClient::served_model(url)?)),
        None => None,
    };
    let peer_clients: Vec<(Contender, ServerClient)> =
        args.peers.iter().map(|p| Ok((Contender::Peer(p.name), ServerClient::for_peer(p)?))).collect::<anyhow::Result<_>>()?;
    let mut transports = Vec::new();
    if in_process {
        transports.push(Transport::InProcess);
    }
    if client.is_some() {
        transports.push(Transport::Server);
    }
    let ks: Vec<usize> = {
        let mut ks = args.cost_ks.clone().unwrap_or_else(|| if args.quick { cost::QUICK_KS.to_vec() } else { cost::DEFAULT_KS.to_vec() });
        ks.push(0);
        ks.sort_unstable();
        ks.dedup();
        ks
    };
    let reps = if args.quick { 3 } else { 10 };
    for s in &suites {
        if let Some(c) = levels.iter().find(|&&c| c > s.prompts.len()) {
            eprintln!("duet bench: suite {} has {} prompts, so concurrency {c} runs only {} at once", s.name, s.prompts.len(), s.prompts.len());
        }
    }

    let prompts: usize = suites.iter().map(|s| s.prompts.len()).sum();
    let warmups = transports.len() * modes.len() + peer_clients.len();
    let hop_prompts = if in_process { args.hops.unwrap_or(if args.quick { hops::QUICK_PROMPTS } else { hops::DEFAULT_PROMPTS }) } else { 0 };
    let checkpoint = args.diffusion.checkpoint_path().display().to_string();
    let hop_plan = hops::HopPlan::new(hop_prompts, suites.first().map_or(&[][..], |s| &s.prompts[..]), &models, &modes, args.block_size, &checkpoint);
    let total = (transports.len() * modes.len() + peer_clients.len()) * levels.len() * prompts * args.repeats
        + warmups
        + if in_process { ks.len() * reps } else { 0 }
        + hop_plan.generations();
    let bar = progress_bar(total as u64);
    let count_tokens = |t: &str| models.verifier.tokenize(t, false).map_or(0, |v| v.len());

    // Warm-up: one short generation per mode and transport, not measured.
    let first = suites.first().and_then(|s| s.prompts.first()).context("no prompts")?;
    for &transport in &transports {
        for &mode in &modes {
            bar.set_message(format!("warm-up {} {}", transport.label(), mode.label()));
            let n = first.max_tokens.min(8);
            match (transport, &client) {
                (Transport::InProcess, _) => drop(models.generate(mode, first, args.block_size, n, None)?),
                (Transport::Server, Some(c)) => drop(c.complete(mode, &first.text, n, args.block_size)?),
                (Transport::Server, None) => {}
            }
            bar.inc(1);
        }
    }
    for (peer, c) in &peer_clients {
        bar.set_message(format!("warm-up {}", peer.label()));
        drop(c.complete_plain(&first.text, first.max_tokens.min(8)).with_context(|| format!("warming up peer {}", peer.label()))?);
        bar.inc(1);
    }

    // The cost curve first: the cost-aware hybrid modes draft by it.
    let cost_curve = if in_process {
        bar.set_message("verifier cost curve");
        cost::measure(&models.verifier, &first.tokens, &ks, reps, || bar.inc(1))?
    } else {
        Vec::new()
    };
    if in_process && args.draft_length == DraftLength::CostAware {
        let ks: Vec<usize> = cost_curve.iter().map(|p| p.k).collect();
        let times: Vec<f64> = cost_curve.iter().map(|p| p.median_s).collect();
        let measured = crate::engine::CostCurve::from_times(&ks, &times).map_err(|e| anyhow::anyhow!("the measured cost curve: {e}"))?;
        let curve = draft_curve.unwrap_or(measured);
        models.draft_policy = crate::engine::DraftPolicy::CostAware(curve);
    }

    let mut samples = Vec::new();
    let mut walls: HashMap<CellKey, f64> = HashMap::new();
    for (t, &transport) in transports.iter().enumerate() {
        // The peers run once, in the first transport's pass, right after Duet's modes.
        let peers = if t == 0 { &peer_clients[..] } else { &[] };
        for &conc in &levels {
            for s in &suites {
                for (g, group) in s.prompts.chunks(conc).enumerate() {
                    let group: Vec<&PreparedPrompt> = group.iter().collect();
                    let mut best: Vec<Option<(Vec<Sample>, f64)>> = vec![None; modes.len() + peers.len()];
                    let mut keep = |m: usize, got: Vec<Sample>, wall: f64| -> anyhow::Result<()> {
                        best[m] = Some(match best[m].take() {
                            None => (got, wall),
                            Some((kept, kept_wall)) => {
                                // A peer need not repeat itself: stock engines are not batch-invariant.
                                if m < modes.len() {
                                    runner::same_outputs(&kept, &got)?;
                                }
                                if wall < kept_wall { (got, wall) } else { (kept, kept_wall) }
                            }
                        });
                        Ok(())
                    };
                    let in_lockstep = args.pairing == Pairing::Lockstep && transport == Transport::InProcess && lockstep::fits(conc, modes.len());
                    let what = if conc == 1 { format!("prompt {}/{}", g + 1, s.prompts.len()) } else { format!("group {}/{}", g + 1, s.prompts.len().div_ceil(conc)) };
                    let say = |msg: String| {
                        if bar.is_hidden() {
                            eprintln!("[bench] {msg}");
                        }
                        bar.set_message(msg);
                    };
                    for rep in 0..args.repeats {
                        let run = if args.repeats > 1 { format!(" run {}/{}", rep + 1, args.repeats) } else { String::new() };
                        if in_lockstep {
                            say(format!("{} c{conc} {} {what} all modes in lockstep{run}", transport.label(), s.name));
                            let got = lockstep::run(&models, &modes, &group, args.block_size)?;
                            bar.inc((modes.len() * group.len()) as u64);
                            for (m, samples) in got.into_iter().enumerate() {
                                // The group's own time: its generations' clocks all start on its first turn.
                                let wall = samples.iter().map(|x| x.e2e_s).fold(0.0, f64::max);
                                keep(m, samples, wall)?;
                            }
                        } else {
                            for (m, &mode) in modes.iter().enumerate() {
                                say(format!("{} c{conc} {} {what} {}{run}", transport.label(), s.name, mode.label()));
                                let (got, wall) = match (transport, &client) {
                                    (Transport::InProcess, _) => runner::run_group(&group, |p| models.sample(mode, p, args.block_size, conc, None))?,
                                    (Transport::Server, Some(c)) => {
                                        runner::run_group(&group, |p| c.sample(mode.into(), p, args.block_size, conc, &count_tokens))?
                                    }
                                    (Transport::Server, None) => continue,
                                };
                                bar.inc(group.len() as u64);
                                keep(m, got, wall)?;
                            }
                        }
                        for (j, (peer, c)) in peers.iter().enumerate() {
                            say(format!("peer {} c{conc} {} {what}{run}", peer.label(), s.name));
                            let (got, wall) = runner::run_group(&group, |p| c.sample(*peer, p, args.block_size, conc, &count_tokens))?;
                            bar.inc(group.len() as u64);
                            keep(modes.len() + j, got, wall)?;
                        }
                    }
                    for (m, kept) in best.into_iter().enumerate() {
                        let Some((got, wall)) = kept else { continue };
                        let (mode, transport) = match modes.get(m) {
                            Some(&mode) => (Contender::Duet(mode), transport),
                            None => (peers[m - modes.len()].0, Transport::Server),
                        };
                        let key = CellKey { suite: s.name.clone(), mode, transport, concurrency: conc };
                        *walls.entry(key).or_default() += wall;
                        samples.extend(got);
                    }
                }
            }
        }
    }

    // The network hops last: their servers and threads must not share the machine with the modes.
    let hop_result = hop_plan.run(&models, |what| {
        let msg = format!("network hops: {what}");
        if bar.is_hidden() {
            eprintln!("[bench] {msg}");
        }
        bar.set_message(msg);
        bar.inc(1);
    });
    let (hop_rows, hops_failure) = match hop_result {
        Ok(rows) => (rows, None),
        Err(f) => (Vec::new(), Some(f)),
    };

    bar.finish_and_clear();
    machine.finish(args.models.threads.unwrap_or_else(duet_verifier::config::default_threads));

    let summaries = summarize(&samples, &walls, args.peers.first().map(|p| p.name));
    let mismatches = check_lossless(&samples);
    let plots = plots::write_all(&args.out, &summaries, &samples, &cost_curve)?;
    let report = Report {
        config: report::RunConfig {
            command: command_line(),
            started_utc,
            duet_version: env!("CARGO_PKG_VERSION").into(),
            verifier: format!("{} ({})", info.description, info.path.display()),
            verifier_features: models.features,
            drafter_checkpoint: models.diffusion.as_ref().map(|_| args.diffusion.checkpoint_path().display().to_string()),
            drafting_model: models.drafting_model.as_ref().map(|m| m.info().path.display().to_string()),
            threads: args.models.threads.unwrap_or_else(duet_verifier::config::default_threads),
            rayon_threads: std::env::var("RAYON_NUM_THREADS").ok(),
            kv_cache: args.models.kv_cache.to_string(),
            block_size: args.block_size,
            draft_length: args.draft_length,
            draft_curve: args.draft_curve.as_ref().map(|p| p.display().to_string()),
            pairing: args.pairing,
            hop_prompts: hop_plan.prompts(),
            quick: args.quick,
            modes: modes.clone(),
            concurrency: levels.clone(),
            server: args.server.clone(),
            peers: args.peers.clone(),
            in_process,
            suites: suites
                .iter()
                .map(|s| report::SuiteInfo { name: s.name.clone(), path: s.path.display().to_string(), prompts: s.prompts.len() })
                .collect(),
        },
        machine,
        skipped,
        summaries,
        prefill_spread: noise::prefill_spread(&samples),
        cost_curve,
        mismatches,
        hops: hop_rows,
        hops_failure,
        plots,
        samples,
    };
    let json_path = args.out.join("results.json");
    let file = std::fs::File::create(&json_path).with_context(|| format!("creating {}", json_path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), &report).with_context(|| format!("writing {}", json_path.display()))?;
    let table = report::markdown(&report);
    std::fs::write(args.out.join("results.md"), &table).with_context(|| format!("writing {}", args.out.join("results.md").display()))?;
    print!("{table}");
    eprintln!("duet bench: wrote {} and {} plot(s) to {}", json_path.display(), report.plots.len(), args.out.display());
    let lossless = verdict(&report.mismatches, &args.out);
    let hop_verdict = hops::verdict(report.hops_failure.as_ref());
    lossless.and(hop_verdict)
}

/// Whether `drafter` is conditioned on hidden states of `verifier`'s width.
fn verifier_features(drafter: Option<&duet_drafter::DiffusionModel>, verifier: &duet_verifier::Verifier) -> bool {
    drafter.and_then(|m| m.feature_dim()).is_some_and(|d| d == verifier.info().n_embd as usize)
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} generations  {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_mismatch_fails_the_run() {
        let m = Mismatch {
            suite: "edit".into(),
            prompt: "rename-py".into(),
            mode: BenchMode::HybridNgram.into(),
            transport: Transport::InProcess,
            concurrency: 1,
            reference: "ar".into(),
            first_difference: 7,
            reference_len: 32,
            len: 32,
        };
        let e = verdict(&[m], Path::new("out")).expect_err("a mismatch must fail the run");
        assert!(format!("{e}").contains("lossless check failed"));
        assert!(verdict(&[], Path::new("out")).is_ok());
    }
}
