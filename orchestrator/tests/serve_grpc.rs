//! `duet serve` serves gRPC (`duet.v1.Orchestrator`, health) alongside the OpenAI-compatible HTTP
//! API, over one generation service: with the real Qwen2.5-Coder-0.5B verifier on free loopback
//! ports, a gRPC Generate and an HTTP completion of the same prompt return the same greedy text,
//! and SIGTERM stops both servers with exit status 0.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use duet_proto::v1 as pb;
use duet_proto::v1::orchestrator_client::OrchestratorClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DUET: &str = env!("CARGO_BIN_EXE_duet");
const PROMPT: &str = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";
const MAX_TOKENS: u32 = 24;

fn model() -> PathBuf {
    let dir = std::env::var_os("DUET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let p = dir.join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh qwen-0.5b", p.display());
    p
}

/// `duet serve`, killed on drop if a test fails before SIGTERM.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `duet serve` on free ports; returns it with its HTTP and gRPC addresses.
fn start() -> (Serve, String, String) {
    let model = model();
    let mut child = Command::new(DUET)
        .args([
            "serve", "--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--max-sessions", "2",
            "--ctx-size", "1024", "--threads", "2", "--verifier-model", model.to_str().expect("utf-8 path"),
        ])
        .env_remove("DUET_API_KEY")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting duet serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                let _ = tx.send((line.contains("gRPC"), addr));
            }
            eprintln!("[duet serve] {line}");
        }
    });
    let mut serve = Serve(child);
    let (mut http, mut grpc) = (None, None);
    while http.is_none() || grpc.is_none() {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((true, addr)) => grpc = Some(format!("http://{addr}")),
            Ok((false, addr)) => http = Some(addr.trim_start_matches("http://").trim_end_matches("/v1").to_owned()),
            Err(_) => {
                if let Ok(Some(status)) = serve.0.try_wait() {
                    panic!("duet serve exited ({status}) before listening");
                }
            }
        }
    }
    (serve, http.unwrap_or_default(), grpc.unwrap_or_default())
}

/// Status and body of one HTTP/1.1 request over a plain socket.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

#[test]
fn duet_serve_answers_grpc_and_http_alike_and_stops_both_on_sigterm() {
    let (mut serve, http_addr, grpc_url) = start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let grpc_text = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(grpc_url.clone()).expect("url").connect().await.expect("connect");
        // Health: NOT_SERVING while the model loads, then SERVING (watched, not polled).
        let mut health = HealthClient::new(channel.clone());
        let req = tonic_health::pb::HealthCheckRequest { service: "duet.v1.Orchestrator".into() };
        let mut watch = health.watch(req).await.expect("watch").into_inner();
        while let Some(update) = watch.message().await.expect("health stream") {
            if update.status() == ServingStatus::Serving {
                break;
            }
        }
        let mut c = OrchestratorClient::new(channel);
        let req = pb::GenerateRequest {
            input: Some(pb::generate_request::Input::Prompt(PROMPT.into())),
            max_tokens: MAX_TOKENS,
            ..Default::default()
        };
        let r = c.generate(req).await.expect("Generate").into_inner();
        assert_eq!(r.token_ids.len(), MAX_TOKENS as usize, "{:?}", r.text);
        r.text
    });

    let body = serde_json::json!({ "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0 }).to_string();
    let (code, text) = http(&http_addr, "POST", "/v1/completions", &body);
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["choices"][0]["text"].as_str(), Some(grpc_text.as_str()), "HTTP and gRPC disagree");
    assert_eq!(http(&http_addr, "GET", "/health", "").0, 200);

    let ok = Command::new("kill").args(["-TERM", &serve.0.id().to_string()]).status().expect("kill");
    assert!(ok.success());
    let status = serve.0.wait().expect("wait");
    assert!(status.success(), "duet serve exited with {status} after SIGTERM");
    assert!(std::net::TcpStream::connect(&http_addr).is_err(), "HTTP still listening after exit");
    assert!(std::net::TcpStream::connect(grpc_url.trim_start_matches("http://")).is_err(), "gRPC still listening after exit");
}
