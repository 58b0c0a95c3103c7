//! Duet spread over three processes on loopback — `duet verifier serve`, `duet drafter serve` and
//! `duet orchestrator serve` — with the real Qwen2.5-Coder-0.5B verifier: greedy output must be
//! token-identical to verifier-only decoding (`duet generate --mode ar`) and to the in-process
//! engine, also when the drafter process dies in the middle of a generation, and when the
//! orchestrator drafts by the cost curve its verifier measures (`MeasureCosts`).
//!
//! The tests live in the orchestrator package because they run its `duet` binary
//! (`CARGO_BIN_EXE_duet`). Each process listens on port 0 and prints the port it bound; a guard
//! kills every child on drop, so a failing test leaves nothing running.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use duet_proto::v1 as pb;
use duet_proto::v1::orchestrator_client::OrchestratorClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DUET: &str = env!("CARGO_BIN_EXE_duet");

fn model() -> PathBuf {
    let dir = std::env::var_os("DUET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let p = dir.join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh qwen-0.5b", p.display());
    p
}

/// A child process that is killed (and reaped) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    /// The `http://` address it listens on.
    url: String,
    /// Further "listening on" lines (a second server in the same process).
    more: Receiver<String>,
    /// Lines about the verifier's cost curve.
    notes: Receiver<String>,
}

impl Proc {
    /// Starts `duet ARGS`, waits for its "listening on ADDR" line and forwards the rest of its
    /// stderr to the test's output (shown when a test fails).
    fn start(name: &'static str, args: &[&str]) -> Proc {
        let mut child = Command::new(DUET)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = channel();
        let (notes_tx, notes) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split(" listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                if line.contains("cost curve") {
                    let _ = notes_tx.send(line.clone());
                }
                eprintln!("[{name}] {line}");
            }
        });
        let addr = wait_line(&rx, name, &mut child);
        Proc { name, child, url: format!("http://{addr}"), more: rx, notes }
    }

    /// The host:port of the next server the process announced (e.g. `--http-listen`).
    fn next_addr(&mut self) -> String {
        let line = wait_line(&self.more, self.name, &mut self.child);
        line.trim_start_matches("http://").split(['/', ' ']).next().unwrap_or_default().to_owned()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill");
        assert!(ok.success(), "kill -TERM {}", self.name);
        self.child.wait().expect("wait")
    }

    /// Kills the process at once (a crash) and reaps it.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_line(rx: &Receiver<String>, name: &str, child: &mut Child) -> String {
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(addr) => return addr,
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited ({status}) before listening");
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    verifier: Proc,
    drafter: Proc,
    orchestrator: Proc,
}

/// The three processes; the orchestrator drafts by `draft_length` (`fixed`: every draft goes through
/// the drafter service, which the lossless and fault tests need to exercise).
fn start_cluster(draft_length: &str) -> Cluster {
    let model = model();
    let verifier = Proc::start(
        "verifier",
        &[
            "verifier", "serve", "--listen", "127.0.0.1:0", "--verifier-model", model.to_str().expect("utf-8 path"),
            "--ctx-size", "1024", "--max-sessions", "2", "--threads", "2",
        ],
    );
    let drafter = Proc::start("drafter", &["drafter", "serve", "--listen", "127.0.0.1:0", "--drafter", "ngram"]);
    let orchestrator = Proc::start(
        "orchestrator",
        &[
            "orchestrator", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--drafter", &drafter.url,
            "--verifier", &verifier.url, "--draft-length", draft_length,
        ],
    );
    Cluster { verifier, drafter, orchestrator }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Waits (on the health Watch stream, no polling) until the orchestrator serves: verifiers loaded
/// and connected.
async fn wait_serving(url: &str) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned()).expect("url").connect().await.expect("connect");
    let mut h = HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest { service: "duet.v1.Orchestrator".into() };
    let mut watch = h.watch(req).await.expect("watch").into_inner();
    while let Some(update) = watch.message().await.expect("health stream") {
        if update.status() == ServingStatus::Serving {
            return;
        }
    }
    panic!("the health stream ended before SERVING");
}

const PROMPT: &str = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";

fn request(max_tokens: u32, mode: pb::Mode) -> pb::GenerateRequest {
    pb::GenerateRequest {
        input: Some(pb::generate_request::Input::Prompt(PROMPT.into())),
        max_tokens,
        mode: mode as i32,
        drafter: "ngram".into(),
        block_size: 6,
        ..Default::default()
    }
}

/// `duet generate --json` in its own process: the in-process engine.
fn generate_locally(mode: &str, max_tokens: u32) -> Vec<u32> {
    let model = model();
    let out = Command::new(DUET)
        .args([
            "generate", "--mode", mode, "--drafter", "ngram", "--block-size", "6", "--json", "--prompt", PROMPT,
            "--max-tokens", &max_tokens.to_string(), "--ctx-size", "1024", "--threads", "2",
            "--verifier-model", model.to_str().expect("utf-8 path"),
        ])
        .output()
        .expect("duet generate");
    assert!(out.status.success(), "duet generate failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["token_ids"].as_array().expect("token_ids").iter().map(|t| t.as_u64().expect("id") as u32).collect()
}

#[test]
fn three_processes_generate_exactly_what_ar_and_the_in_process_engine_generate() {
    const N: u32 = 32;
    let cluster = start_cluster("fixed");
    let rt = rt();
    let url = cluster.orchestrator.url.clone();
    let (unary, streamed, stats) = rt.block_on(async {
        wait_serving(&url).await;
        let mut c = OrchestratorClient::connect(url).await.expect("connect");
        let unary = c.generate(request(N, pb::Mode::Hybrid)).await.expect("Generate").into_inner();
        let mut stream = c.generate_stream(request(N, pb::Mode::Hybrid)).await.expect("GenerateStream").into_inner();
        let (mut tokens, mut text, mut stats) = (Vec::new(), String::new(), None);
        while let Some(msg) = stream.message().await.expect("stream") {
            match msg.event {
                Some(pb::generate_stream_response::Event::Delta(d)) => {
                    tokens.extend(d.token_ids);
                    text.push_str(&d.text);
                }
                Some(pb::generate_stream_response::Event::Final(f)) => stats = f.stats,
                None => panic!("an empty stream message"),
            }
        }
        assert_eq!(text, unary.text, "streamed text differs from the unary text");
        (unary, tokens, stats)
    });
    assert_eq!(unary.token_ids.len(), N as usize, "{:?}", unary.text);
    assert_eq!(streamed, unary.token_ids);
    let stats = stats.expect("final stats");
    assert!(stats.drafted > 0, "the drafter service was never used: {stats:?}");

    let ar = generate_locally("ar", N);
    assert_eq!(unary.token_ids, ar, "three-process hybrid differs from verifier-only decoding");
    let hybrid = generate_locally("hybrid", N);
    assert_eq!(unary.token_ids, hybrid, "three-process hybrid differs from the in-process engine");

    // The orchestrator's OpenAI-compatible HTTP API (--http-listen) answers the same.
    let mut cluster = cluster;
    let http_addr = cluster.orchestrator.next_addr();
    let body = serde_json::json!({
        "prompt": PROMPT, "max_tokens": N, "temperature": 0, "mode": "hybrid", "drafter": "ngram", "block_size": 6,
    });
    let (code, text) = http_post(&http_addr, "/v1/completions", &body.to_string());
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["choices"][0]["text"].as_str(), Some(unary.text.as_str()), "HTTP differs from gRPC");

    // SIGTERM: each process drains and exits cleanly.
    let Cluster { verifier, drafter, orchestrator } = cluster;
    for p in [orchestrator, drafter, verifier] {
        let name = p.name;
        let status = p.terminate();
        assert!(status.success(), "{name} exited with {status} after SIGTERM");
    }
}

/// Status and body of one HTTP/1.1 POST over a plain socket.
fn http_post(addr: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

#[test]
fn killing_the_drafter_mid_generation_falls_back_to_ar_steps_with_the_same_output() {
    const N: u32 = 48;
    let Cluster { verifier, drafter, orchestrator } = start_cluster("fixed");
    let rt = rt();
    let url = orchestrator.url.clone();
    let mut drafter = Some(drafter);
    let (tokens, stats) = rt.block_on(async {
        wait_serving(&url).await;
        let mut c = OrchestratorClient::connect(url).await.expect("connect");
        let mut stream = c.generate_stream(request(N, pb::Mode::Hybrid)).await.expect("GenerateStream").into_inner();
        let (mut tokens, mut stats, mut deltas) = (Vec::new(), None, 0);
        while let Some(msg) = stream.message().await.expect("the generation survives the drafter") {
            match msg.event {
                Some(pb::generate_stream_response::Event::Delta(d)) => {
                    tokens.extend(d.token_ids);
                    deltas += 1;
                    if deltas == 3
                        && let Some(d) = drafter.take()
                    {
                        d.kill();
                    }
                }
                Some(pb::generate_stream_response::Event::Final(f)) => stats = f.stats,
                None => panic!("an empty stream message"),
            }
        }
        (tokens, stats.expect("final stats"))
    });
    assert!(drafter.is_none(), "the generation ended before the drafter could be stopped");
    assert_eq!(tokens.len(), N as usize);
    assert!(stats.drafter_failures >= 1, "no round noticed the dead drafter: {stats:?}");
    let ar = generate_locally("ar", N);
    assert_eq!(tokens, ar, "output changed when the drafter died");
    drop((orchestrator, verifier));
}

/// `duet orchestrator serve` drafts by the cost curve its verifier measures where the model runs
/// (`MeasureCosts`), as `duet serve` does in process, and its output stays that of AR decoding.
#[test]
fn the_orchestrator_drafts_by_the_cost_curve_its_verifier_measures() {
    const N: u32 = 16;
    let cluster = start_cluster("cost-aware");
    let note = cluster.orchestrator.notes.recv_timeout(Duration::from_secs(300)).expect("a cost-curve line");
    assert!(
        note.starts_with(&format!("duet: verify cost curve measured on {}", cluster.verifier.url)) && note.contains("c(k) = 1.00 "),
        "{note}"
    );
    let url = cluster.orchestrator.url.clone();
    let (hybrid, ar) = rt().block_on(async {
        wait_serving(&url).await;
        let mut c = OrchestratorClient::connect(url).await.expect("connect");
        let hybrid = c.generate(request(N, pb::Mode::Hybrid)).await.expect("hybrid").into_inner();
        let ar = c.generate(request(N, pb::Mode::Ar)).await.expect("ar").into_inner();
        (hybrid.token_ids, ar.token_ids)
    });
    assert_eq!(hybrid.len(), N as usize);
    assert_eq!(hybrid, ar, "cost-aware hybrid differs from AR through the same orchestrator");
}
