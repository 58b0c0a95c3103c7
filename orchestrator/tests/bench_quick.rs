//! `duet bench --quick` end to end with the real Qwen2.5-Coder-0.5B verifier (also the AR drafter)
//! and a tiny random standalone diffusion drafter, so every mode runs: the JSON file, the markdown
//! table, the network-hop table and the plots appear, every greedy hybrid output equals ar's (split
//! over gRPC too), and bad flags fail cleanly.
//! The model must be in `models/` (scripts/fetch-models.sh qwen-0.5b): the test fails without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use duet_drafter::{DiffusionModel, DrafterConfig};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn small_model() -> PathBuf {
    let dir = std::env::var_os("DUET_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let p = dir.join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh qwen-0.5b", p.display());
    p
}

/// A small standalone drafter with random weights: it drafts badly, which is what the lossless
/// check needs (rejections at every position), and it can run without the verifier.
fn tiny_drafter(dir: &Path) {
    let mut config = DrafterConfig::proposed_standalone(4000);
    config.num_hidden_layers = 2;
    config.hidden_size = 128;
    config.intermediate_size = 256;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    DiffusionModel::random(&config, 5).expect("random drafter").save(dir).expect("saving the drafter");
}

fn duet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duet")).args(args).current_dir(root()).output().expect("running duet")
}

#[test]
fn quick_bench_runs_every_mode_and_writes_json_table_and_plots() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let drafter = tmp.path().join("drafter");
    tiny_drafter(&drafter);
    let suite = tmp.path().join("code.jsonl");
    std::fs::write(
        &suite,
        concat!(
            r#"{"id": "fib", "prompt": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", "max_tokens": 64}"#,
            "\n",
            r#"{"id": "rust-max", "prompt": "/// The largest element of a slice.\nfn max_of(values: &[i32]) -> Option<i32> {\n"}"#,
            "\n"
        ),
    )
    .expect("writing the suite");
    let out = tmp.path().join("out");
    let chat = root().join("benches/data/chat.jsonl");
    let model = small_model();
    let args = [
        "bench", "--quick", "--suite", suite.to_str().expect("utf-8"), "--suite", chat.to_str().expect("utf-8"),
        "--limit", "2", "--max-tokens", "16", "--block-size", "4", "--concurrency", "1,2", "--cost-ks", "1,4",
        // Every draft sent, so every hybrid column has data (the cost-aware default may send none).
        "--draft-length", "fixed",
        "--verifier-model", model.to_str().expect("utf-8"), "--drafter-model", model.to_str().expect("utf-8"),
        "--drafter-checkpoint", drafter.to_str().expect("utf-8"), "--ctx-size", "1024", "--out", out.to_str().expect("utf-8"),
    ];
    let run = duet(&args);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "duet bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("| suite | mode | via | conc | tok/s |"), "{stdout}");
    assert!(stdout.contains("Lossless check: every greedy hybrid output equals ar's."), "{stdout}");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json")).expect("json");
    assert_eq!(json["mismatches"].as_array().expect("mismatches").len(), 0);
    assert_eq!(json["config"]["draft_length"], "fixed");
    // Concurrency 1 ran every mode of a prompt in lockstep; its noise floor covers all 4 prompts.
    assert_eq!(json["config"]["pairing"], "lockstep");
    assert_eq!(json["prefill_spread"]["prompts"], 4, "{}", json["prefill_spread"]);
    assert!(stdout.contains("Noise floor:"), "{stdout}");
    assert_eq!(json["skipped"].as_array().expect("skipped").len(), 0, "{}", json["skipped"]);
    let modes = ["ar", "hybrid-diffusion", "hybrid-ngram", "hybrid-ar-model", "diffusion"];
    let samples = json["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 2 * 2 * modes.len() * 2, "2 suites × 2 prompts × 5 modes × 2 levels");
    assert!(samples.iter().all(|s| s["generated_tokens"].as_u64().is_some_and(|n| n <= 16)));

    let summaries = json["summaries"].as_array().expect("summaries");
    assert_eq!(summaries.len(), 2 * modes.len() * 2);
    for s in summaries {
        let mode = s["mode"].as_str().expect("mode");
        assert!(modes.contains(&mode), "{mode}");
        assert!(s["throughput_tok_s"].as_f64().is_some_and(|t| t > 0.0), "{s}");
        assert!(s["e2e_p50_s"].as_f64().is_some_and(|t| t > 0.0), "{s}");
        assert_eq!(s["compared_with_ar"], 2, "{s}");
        if mode == "ar" {
            assert_eq!(s["speedup_median"], 1.0);
        } else {
            assert!(s["speedup_median"].as_f64().is_some_and(|x| x > 0.0), "{s}");
        }
        if mode.starts_with("hybrid") || mode == "ar" {
            assert_eq!(s["identical_to_ar"], 2, "greedy {mode} must equal ar: {s}");
        }
        if mode.starts_with("hybrid") {
            assert!(s["mean_accepted_length"].as_f64().is_some_and(|t| t >= 1.0), "{s}");
            assert!(!s["acceptance_by_position"].as_array().expect("by position").is_empty(), "{s}");
            assert!(s["drafter_share"].as_f64().is_some_and(|x| x > 0.0), "{s}");
        }
        if mode == "diffusion" {
            assert!(s["edit_similarity_mean"].as_f64().is_some(), "{s}");
        }
    }

    let cost = json["cost_curve"].as_array().expect("cost curve");
    let ks: Vec<u64> = cost.iter().map(|p| p["k"].as_u64().expect("k")).collect();
    assert_eq!(ks, vec![0, 1, 4]);
    assert_eq!(cost[0]["c"], 1.0);

    let plots = json["plots"].as_array().expect("plots");
    for name in ["speedup-in-process-c1.svg", "speedup-in-process-c2.svg", "acceptance.svg", "latency.svg", "cost-curve.svg"] {
        assert!(plots.iter().any(|p| p == name), "{name} not listed in {plots:?}");
        let svg = std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{name} is not an SVG");
    }
    assert!(out.join("results.md").is_file());

    // The network hops (--quick: the first 2 prompts of the first suite), every mode on both sides.
    assert_eq!(json["config"]["hop_prompts"], 2);
    assert!(json["hops_failure"].is_null(), "{}", json["hops_failure"]);
    let hops = json["hops"].as_array().expect("hops");
    for mode in ["ar", "hybrid-ngram", "hybrid-diffusion"] {
        let row = |t: &str| hops.iter().find(|r| r["mode"] == mode && r["transport"] == t).unwrap_or_else(|| panic!("{mode} {t} in {hops:?}"));
        let (local, split) = (row("in-process"), row("split-grpc"));
        assert_eq!(local["tokens"], split["tokens"], "{mode}: both transports generate the same tokens");
        assert!(local["tokens"].as_u64().is_some_and(|t| t > 0), "{local}");
        for r in [local, split] {
            assert!(r["rounds"].as_u64().is_some_and(|n| n > 0), "{r}");
            assert!(r["ms_per_round"].as_f64().is_some_and(|ms| ms > 0.0 && ms.is_finite()), "{r}");
        }
    }
    assert_eq!(hops.len(), 6);
    assert!(stdout.contains("Network hops (2 prompt(s) of code"), "{stdout}");
    assert!(stdout.contains("| mode | rounds | tokens | in-process ms/round | split ms/round | hops ms/round |"), "{stdout}");
}

#[test]
fn bad_flags_end_with_one_error_line() {
    let run = duet(&["bench", "--suite", "benches/data/chat.jsonl", "--concurrency", "0", "--out", "/tmp/never"]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.starts_with("error: ") && stderr.contains("--concurrency") && stderr.contains("between 1 and 16"), "{stderr}");

    let run = duet(&["bench", "--suite", "no/such/suite.jsonl", "--out", "/tmp/never"]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.starts_with("error: ") && stderr.contains("no/such/suite.jsonl"), "{stderr}");
}
