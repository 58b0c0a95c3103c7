//! `duet loadtest`: many concurrent streaming clients against one `duet serve`, checking every
//! answer, bounded in time and in count, stopping by itself.
//!
//! 1. Without `--server`, starts `duet serve` on a free loopback port with the small verifier and
//!    stops it at the end (its memory is sampled from `/proc`).
//! 2. Takes each prompt's reference: its greedy verifier-only output (`mode: ar`), one request at a
//!    time, before any load.
//! 3. Runs `--clients` threads for `--duration` seconds (at most `--max-requests` requests in all):
//!    each streams completions of the prompts in turn, mostly hybrid, every fourth verifier-only.
//!    Every answer must equal its prompt's reference exactly and end with `[DONE]`: a different text
//!    is *corrupted* (a duplicated or lost piece shows up there), a failed or cut stream is *lost*,
//!    a 429 is *refused* (the client waits `Retry-After` and goes on).
//! 4. Reports throughput, latency percentiles, the server's memory (start of load, peak, end) and,
//!    from `/metrics`, that the verifier holds no session or KV entry once idle.
//!
//! Exit status 1 when any answer was corrupted or lost, the server kept sessions, or its memory
//! grew past the bound.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;

use super::metrics::percentile;
use super::modes::BenchMode;
use super::server::{HttpStatus, ServerClient};

/// Prompts of the default load: short code and prose beginnings with varied continuations.
const DEFAULT_PROMPTS: [&str; 8] = [
    "def fibonacci(n):\n",
    "fn main() {\n    let numbers = vec![3, 1, 4, 1, 5, 9];\n",
    "# A function that checks whether a string is a palindrome\n",
    "SELECT name, COUNT(*) FROM orders\n",
    "The three laws of thermodynamics are",
    "class Stack:\n    def __init__(self):\n",
    "// Binary search over a sorted slice\npub fn search(xs: &[i32], x: i32) -> Option<usize> {\n",
    "import json\n\ndef load_config(path):\n",
];

/// Most clients, seconds and requests one run may ask for.
const MAX_CLIENTS: usize = 256;
const MAX_DURATION_S: u64 = 3600;
const MAX_REQUESTS: usize = 1_000_000;
const MAX_SESSIONS: usize = duet_verifier::config::MAX_SESSIONS as usize;

/// Arguments of `duet loadtest`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Base URL of a running server (e.g. http://127.0.0.1:8080). Without it, `duet serve` is started
    /// on a free loopback port with --verifier-model and stopped at the end.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Process id of the server at --server, to sample its memory (automatic when started here).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Concurrent streaming clients, 1 to 256.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of load, 1 to 3600; requests in flight then finish.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Most requests in all (the run also stops there).
    #[arg(long, default_value_t = 100_000)]
    pub max_requests: usize,
    /// Tokens per completion, 1 to 4096.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Prompts, one JSON object per line with a `prompt` field [default: eight built-in code prompts].
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Verifier of the server started here [default: models/qwen2.5-coder-0.5b-instruct.gguf].
    #[arg(long)]
    pub verifier_model: Option<PathBuf>,
    /// Sessions of the server started here (--max-sessions of `duet serve`).
    #[arg(long, default_value_t = 4)]
    pub max_sessions: usize,
    /// Memory growth of the server allowed from the start of the load to its end, in MiB.
    #[arg(long, default_value_t = 256)]
    pub max_growth_mib: u64,
    /// Write the report here as JSON too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    fn check(&self) -> anyhow::Result<()> {
        ensure!((1..=MAX_CLIENTS).contains(&self.clients), "`--clients` must be between 1 and {MAX_CLIENTS}, got {}", self.clients);
        ensure!(
            (1..=MAX_DURATION_S).contains(&self.duration),
            "`--duration` must be between 1 and {MAX_DURATION_S} seconds, got {}",
            self.duration
        );
        ensure!(
            (1..=MAX_REQUESTS).contains(&self.max_requests),
            "`--max-requests` must be between 1 and {MAX_REQUESTS}, got {}",
            self.max_requests
        );
        ensure!((1..=4096).contains(&self.max_tokens), "`--max-tokens` must be between 1 and 4096, got {}", self.max_tokens);
        ensure!(
            (1..=MAX_SESSIONS).contains(&self.max_sessions),
            "`--max-sessions` must be between 1 and {MAX_SESSIONS}, got {}",
            self.max_sessions
        );
        Ok(())
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub duration_s: f64,
    pub prompts: usize,
    pub max_tokens: usize,
    /// Answers equal to their reference.
    pub ok: usize,
    /// Answers that differ from their reference.
    pub corrupted: usize,
    /// Requests that failed or whose stream was cut.
    pub lost: usize,
    /// Requests refused with 429.
    pub refused: usize,
    pub completion_tokens: usize,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    pub latency_p50_s: f64,
    pub latency_p99_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    /// Server resident memory at the start of the load, its peak and at the end, in MiB.
    pub rss_start_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
    /// `/metrics` once idle: sessions open and KV tokens held by the verifier.
    pub idle_verifier_sessions: Option<f64>,
    pub idle_kv_tokens: Option<f64>,
    /// The first few problems, for the log.
    pub problems: Vec<String>,
    /// Whether everything held.
    pub passed: bool,
}

/// Runs `duet loadtest`.
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    args.check()?;
    let prompts = load_prompts(args.prompts.as_deref())?;
    let started_here = match &args.server {
        Some(_) => None,
        None => Some(ServerProcess::start(&args)?),
    };
    let base = match (&args.server, &started_here) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(p)) => p.base.clone(),
        (None, None) => unreachable!("a server is given or started"),
    };
    let pid = args.server_pid.or(started_here.as_ref().map(|p| p.child.id()));
    wait_healthy(&base, Duration::from_secs(600))?;
    let client = ServerClient::new(&base).with_model(&ServerClient::served_model(&base)?);

    eprintln!("loadtest: {} references (verifier-only, one at a time)", prompts.len());
    let mut references = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let c = client
            .complete(BenchMode::Ar, p, args.max_tokens, 1)
            .with_context(|| format!("reference of prompt {i} (verifier-only)"))?;
        ensure!(c.done, "the reference stream of prompt {i} ended without [DONE]");
        references.push(c.text);
    }

    let report = load(&args, &client, &prompts, &references, pid)?;
    let report = with_idle_metrics(report, &base, &args);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    drop(started_here);
    if !report.passed {
        bail!("the load test failed: {}", report.problems.first().map(String::as_str).unwrap_or("see the report"));
    }
    Ok(())
}

/// The load phase.
fn load(
    args: &LoadArgs,
    client: &ServerClient,
    prompts: &[String],
    references: &[String],
    pid: Option<u32>,
) -> anyhow::Result<LoadReport> {
    #[derive(Default)]
    struct Tally {
        ok: usize,
        corrupted: usize,
        lost: usize,
        refused: usize,
        tokens: usize,
        latencies: Vec<f64>,
        ttfts: Vec<f64>,
        problems: Vec<String>,
    }
    let tally = Mutex::new(Tally::default());
    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let memory = MemorySampler::start(pid);
    eprintln!("loadtest: {} clients for {} s (at most {} requests)", args.clients, args.duration, args.max_requests);
    let t0 = Instant::now();
    let progress = ProgressLine::start(args.duration, issued.clone());
    std::thread::scope(|scope| {
        for _ in 0..args.clients {
            scope.spawn(|| {
                loop {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let i = issued.fetch_add(1, Ordering::SeqCst);
                    if i >= args.max_requests {
                        break;
                    }
                    let p = i % prompts.len();
                    let mode = if i % 4 == 3 { BenchMode::Ar } else { BenchMode::HybridNgram };
                    let result = client.complete(mode, &prompts[p], args.max_tokens, 8);
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(c) if !c.done => {
                            t.lost += 1;
                            t.problems.push(format!("request {i} (prompt {p}): the stream ended without [DONE]"));
                        }
                        Ok(c) if c.text != references[p] => {
                            t.corrupted += 1;
                            let at = c.text.chars().zip(references[p].chars()).take_while(|(a, b)| a == b).count();
                            t.problems.push(format!(
                                "request {i} (prompt {p}, {}): differs from the reference at character {at}: {:?} vs {:?}",
                                mode.label(),
                                c.text.chars().skip(at).take(20).collect::<String>(),
                                references[p].chars().skip(at).take(20).collect::<String>()
                            ));
                        }
                        Ok(c) => {
                            t.ok += 1;
                            t.tokens += c.completion_tokens.unwrap_or_default();
                            t.latencies.push(c.deliveries.e2e_s);
                            t.ttfts.push(c.deliveries.ttft_s);
                        }
                        Err(e) => match e.downcast_ref::<HttpStatus>() {
                            Some(s) if s.status == 429 => {
                                t.refused += 1;
                                let wait = Duration::from_secs(s.retry_after_s.unwrap_or(1));
                                drop(t);
                                std::thread::sleep(wait);
                            }
                            _ => {
                                t.lost += 1;
                                t.problems.push(format!("request {i} (prompt {p}): {e:#}"));
                            }
                        },
                    }
                }
            });
        }
    });
    drop(progress);
    let elapsed = t0.elapsed().as_secs_f64();
    let (rss_start, rss_peak, rss_end) = memory.finish();
    let t = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut problems = t.problems;
    let grew = match (rss_start, rss_end) {
        (Some(a), Some(b)) if b - a > args.max_growth_mib as f64 => {
            problems.push(format!("the server's memory grew from {a:.0} MiB to {b:.0} MiB (--max-growth-mib {})", args.max_growth_mib));
            true
        }
        _ => false,
    };
    if t.ok == 0 {
        problems.push("no request succeeded".into());
    }
    problems.truncate(20);
    Ok(LoadReport {
        clients: args.clients,
        duration_s: elapsed,
        prompts: prompts.len(),
        max_tokens: args.max_tokens,
        ok: t.ok,
        corrupted: t.corrupted,
        lost: t.lost,
        refused: t.refused,
        completion_tokens: t.tokens,
        requests_per_s: t.ok as f64 / elapsed,
        tokens_per_s: t.tokens as f64 / elapsed,
        latency_p50_s: percentile(&t.latencies, 50.0),
        latency_p99_s: percentile(&t.latencies, 99.0),
        ttft_p50_s: percentile(&t.ttfts, 50.0),
        ttft_p99_s: percentile(&t.ttfts, 99.0),
        rss_start_mib: rss_start,
        rss_peak_mib: rss_peak,
        rss_end_mib: rss_end,
        idle_verifier_sessions: None,
        idle_kv_tokens: None,
        passed: t.corrupted == 0 && t.lost == 0 && t.ok > 0 && !grew,
        problems,
    })
}

/// Adds the verifier's idle sessions and KV tokens from `/metrics` (they must be zero).
fn with_idle_metrics(mut report: LoadReport, base: &str, args: &LoadArgs) -> LoadReport {
    let metrics = scrape(base);
    report.idle_verifier_sessions = metrics.as_deref().and_then(|m| metric(m, "duet_verifier_sessions"));
    report.idle_kv_tokens = metrics.as_deref().and_then(|m| metric(m, "duet_verifier_kv_tokens"));
    for (name, v) in [("verifier sessions", report.idle_verifier_sessions), ("verifier KV tokens", report.idle_kv_tokens)] {
        if let Some(v) = v
            && v != 0.0
        {
            report.problems.push(format!("{v} {name} held once every client had finished"));
            report.passed = false;
        }
    }
    if args.server.is_none() && report.idle_kv_tokens.is_none() {
        report.problems.push("the server's /metrics has no duet_verifier_kv_tokens".into());
        report.passed = false;
    }
    report
}

fn scrape(base: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    agent.get(&format!("{base}/metrics")).call().ok()?.into_body().read_to_string().ok()
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn print_report(r: &LoadReport) {
    println!("{} clients, {:.0} s, {} prompts × {} tokens", r.clients, r.duration_s, r.prompts, r.max_tokens);
    println!(
        "answers: {} ok, {} corrupted, {} lost, {} refused (429)",
        r.ok, r.corrupted, r.lost, r.refused
    );
    println!("throughput: {:.2} requests/s, {:.1} tokens/s", r.requests_per_s, r.tokens_per_s);
    println!(
        "latency: p50 {:.2} s, p99 {:.2} s; time to first token: p50 {:.2} s, p99 {:.2} s",
        r.latency_p50_s, r.latency_p99_s, r.ttft_p50_s, r.ttft_p99_s
    );
    if let (Some(a), Some(p), Some(b)) = (r.rss_start_mib, r.rss_peak_mib, r.rss_end_mib) {
        println!("server memory: {a:.0} MiB at the start of the load, peak {p:.0} MiB, {b:.0} MiB at the end");
    }
    if let (Some(s), Some(k)) = (r.idle_verifier_sessions, r.idle_kv_tokens) {
        println!("once idle: {s} verifier sessions, {k} KV tokens");
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    println!("{}", if r.passed { "PASSED" } else { "FAILED" });
}

fn load_prompts(file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let Some(file) = file else { return Ok(DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect()) };
    let text = std::fs::read_to_string(file).with_context(|| format!("reading --prompts {}", file.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", file.display(), n + 1))?;
        let prompt = v.get("prompt").and_then(|p| p.as_str()).filter(|p| !p.is_empty());
        let prompt = prompt.with_context(|| format!("{} line {}: needs a non-empty string `prompt`", file.display(), n + 1))?;
        out.push(prompt.to_owned());
    }
    ensure!(!out.is_empty(), "--prompts {} holds no prompt", file.display());
    Ok(out)
}

fn wait_healthy(base: &str, limit: Duration) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let until = Instant::now() + limit;
    loop {
        if let Ok(r) = agent.get(&format!("{base}/health")).call()
            && r.status() == 200
        {
            return Ok(());
        }
        ensure!(Instant::now() < until, "{base}/health did not answer 200 within {} s", limit.as_secs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `duet serve` started by the load test; killed on drop.
struct ServerProcess {
    child: Child,
    base: String,
}

impl ServerProcess {
    fn start(args: &LoadArgs) -> anyhow::Result<Self> {
        let model = match &args.verifier_model {
            Some(m) => m.clone(),
            None => crate::cli::default_models_dir().join("qwen2.5-coder-0.5b-instruct.gguf"),
        };
        ensure!(model.is_file(), "the verifier {} does not exist (run `duet models fetch` or pass --verifier-model)", model.display());
        let exe = std::env::current_exe().context("finding the duet executable")?;
        let mut child = Command::new(exe)
            .args(["serve", "--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--max-queued", "256"])
            .arg("--max-sessions")
            .arg(args.max_sessions.to_string())
            .arg("--verifier-model")
            .arg(&model)
            .env_remove("DUET_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `duet serve`")?;
        let stderr = child.stderr.take().context("the server's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let base = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                bail!("`duet serve` stopped before listening:\n{}", seen.join("\n"));
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split('/').next().unwrap_or_default();
                break format!("http://{addr}");
            }
            seen.push(line);
        };
        // Keep draining the server's log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        eprintln!("loadtest: started `duet serve` at {base} (pid {})", child.id());
        Ok(Self { child, base })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples a process's resident memory once a second.
struct MemorySampler {
    samples: Arc<Mutex<Vec<f64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemorySampler {
    fn start(pid: Option<u32>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = pid.map(|pid| {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(mib) = rss_mib(pid) {
                        samples.lock().unwrap_or_else(|e| e.into_inner()).push(mib);
                    }
                    std::thread::sleep(Duration::from_millis(1000));
                }
                if let Some(mib) = rss_mib(pid) {
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(mib);
                }
            })
        });
        Self { samples, stop, thread }
    }

    /// First, peak and last sample.
    fn finish(mut self) -> (Option<f64>, Option<f64>, Option<f64>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        (s.first().copied(), s.iter().copied().reduce(f64::max), s.last().copied())
    }
}

/// Resident memory of a process, from `/proc/<pid>/status` (Linux).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Prints requests issued every ten seconds while the load runs.
struct ProgressLine {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    fn start(duration_s: u64, issued: Arc<AtomicUsize>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let t0 = Instant::now();
            std::thread::spawn(move || {
                let mut next = 10;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    let s = t0.elapsed().as_secs();
                    if s >= next && s <= duration_s {
                        eprintln!("loadtest: {s} / {duration_s} s, {} requests started", issued.load(Ordering::SeqCst));
                        next += 10;
                    }
                }
            })
        };
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlabelled_metrics_are_read_from_prometheus_text() {
        let text = "# TYPE duet_verifier_kv_tokens gauge\nduet_verifier_kv_tokens 0\nduet_verifier_sessions 2\n";
        assert_eq!(metric(text, "duet_verifier_kv_tokens"), Some(0.0));
        assert_eq!(metric(text, "duet_verifier_sessions"), Some(2.0));
        assert_eq!(metric(text, "duet_verifier_decodes_total"), None);
    }

    #[test]
    fn out_of_range_arguments_name_the_flag_and_the_limit() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadArgs,
        }
        let args = |extra: &[&str]| Cli::parse_from([&["x"], extra].concat()).args.check().unwrap_err().to_string();
        assert!(args(&["--clients", "0"]).contains("`--clients` must be between 1 and 256"));
        assert!(args(&["--duration", "99999"]).contains("`--duration` must be between 1 and 3600"));
        assert!(args(&["--max-tokens", "0"]).contains("`--max-tokens`"));
    }

    #[test]
    fn a_prompt_file_without_prompts_is_refused_with_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("p.jsonl");
        std::fs::write(&f, "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n").expect("write");
        let e = load_prompts(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("`prompt`"), "{e}");
    }
}
