//! `duet bench --server-only` against a fake OpenAI-compatible server: the server path of the
//! harness end to end (warm-up, concurrent streamed requests, usage, summaries), and the lossless
//! check through it — a hybrid answer that differs from ar's must fail the run loudly, after the
//! report is written. The verifier still loads here (chat templates, token counts): the real 0.5B.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn small_model() -> PathBuf {
    let dir = std::env::var_os("DUET_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let p = dir.join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh qwen-0.5b", p.display());
    p
}

/// The model the fake server lists; completions naming another one are refused, as `duet serve`
/// refuses them.
const SERVED_MODEL: &str = "fake-coder";

/// Answers one request: `GET /v1/models` with [`SERVED_MODEL`]; a completion with the same text for
/// every mode, except a hybrid request whose prompt holds `MISMATCH-ME`.
fn answer(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if head.starts_with("get /v1/models") {
        let body = json!({"object": "list", "data": [{"id": SERVED_MODEL, "object": "model", "owned_by": "fake"}]}).to_string();
        let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        return;
    }
    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    if stream.read_exact(&mut body).is_err() {
        return;
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if req["model"] != SERVED_MODEL {
        let body = json!({"error": {"message": "the model does not exist", "code": "model_not_found"}}).to_string();
        let _ = write!(stream, "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        return;
    }
    let prompt = req["prompt"].as_str().unwrap_or("");
    let hybrid = req["mode"] == "hybrid";
    let text = if hybrid && prompt.contains("MISMATCH-ME") { ["return a", " - b\n"] } else { ["return a", " + b\n"] };
    let mut events: Vec<String> = text.iter().map(|t| format!("data: {}\n\n", json!({"choices": [{"index": 0, "text": t}]}))).collect();
    let details = if hybrid { json!({"accepted_prediction_tokens": 3, "rejected_prediction_tokens": 1}) } else { json!({}) };
    events.push(format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "text": "", "finish_reason": "length"}], "usage": {"completion_tokens": 6, "completion_tokens_details": details}})
    ));
    events.push("data: [DONE]\n\n".into());
    let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    for e in events {
        let _ = write!(stream, "{:x}\r\n{e}\r\n", e.len());
    }
    let _ = write!(stream, "0\r\n\r\n");
}

fn fake_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    url
}

fn bench(prompts: &[&str], out: &std::path::Path) -> std::process::Output {
    let suite = out.with_extension("jsonl");
    let lines: Vec<String> =
        prompts.iter().enumerate().map(|(i, p)| json!({"id": format!("p{i}"), "prompt": p, "max_tokens": 6}).to_string()).collect();
    std::fs::write(&suite, lines.join("\n")).expect("suite");
    let model = small_model();
    Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(["bench", "--server-only", "--server", &fake_server(), "--modes", "ar,hybrid-ngram", "--concurrency", "1,2"])
        .args(["--suite", suite.to_str().expect("utf-8"), "--verifier-model", model.to_str().expect("utf-8"), "--ctx-size", "512"])
        .args(["--out", out.to_str().expect("utf-8")])
        .current_dir(root())
        .output()
        .expect("running duet")
}

#[test]
fn the_server_path_measures_every_request_and_passes_when_outputs_agree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let run = bench(&["def add(a, b):\n", "def sub(a, b):\n"], &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results")).expect("json");
    let samples = json["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 2 * 2 * 2, "2 prompts × 2 modes × 2 levels");
    assert!(samples.iter().all(|s| s["transport"] == "server" && s["generated_tokens"] == 6 && s["deliveries"] == 2));
    assert!(samples.iter().all(|s| s["text"] == "return a + b\n"));
    let hybrid = json["summaries"].as_array().expect("summaries").iter().find(|s| s["mode"] == "hybrid-ngram").expect("hybrid");
    assert_eq!(hybrid["acceptance_rate"], 0.75);
    assert_eq!(hybrid["identical_to_ar"], 2);
    assert!(json["cost_curve"].as_array().expect("cost").is_empty(), "no in-process cost curve with --server-only");
}

#[test]
fn a_hybrid_answer_that_differs_from_ar_fails_the_run_after_the_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let run = bench(&["def add(a, b):\n", "def sub(a, b):  # MISMATCH-ME\n"], &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("MISMATCH: out/p1: hybrid-ngram (server, concurrency 1) differs from ar at character 9"), "{stderr}");
    assert!(stderr.contains("error: ") && stderr.contains("lossless check failed"), "{stderr}");
    assert!(stdout.contains("LOSSLESS CHECK FAILED"), "{stdout}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results")).expect("json");
    assert_eq!(json["mismatches"].as_array().expect("mismatches").len(), 2, "one per concurrency level");
}
