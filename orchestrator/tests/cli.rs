//! The `duet` command line on bad input and on a real generation with the 0.5B model: one clear
//! error line and a non-zero exit, never a panic; `--json` output with every promised field.

use std::path::PathBuf;
use std::process::{Command, Output};

fn models_dir() -> PathBuf {
    std::env::var_os("DUET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

fn small_model() -> PathBuf {
    let p = models_dir().join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh qwen-0.5b", p.display());
    p
}

fn duet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(args)
        .env_remove("DUET_VERIFIER_MODEL")
        .env_remove("DUET_DRAFTER_MODEL")
        // Cost curves measured by tests (on whatever else the machine is doing) stay out of the
        // user's cache.
        .env("DUET_COST_CACHE", cost_cache())
        .output()
        .expect("running duet")
}

fn cost_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("duet-cli-test-verify-costs.json")
}

/// Runs `duet generate` with the small model and expects a failure whose message contains `needle`.
fn expect_error(extra: &[&str], needle: &str) {
    let model = small_model();
    let mut args = vec!["generate", "--verifier-model", model.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let out = duet(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {extra:?}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic for {extra:?}: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains(needle), "for {extra:?} expected `{needle}`, got: {stderr}");
}

#[test]
fn empty_prompt_is_refused() {
    expect_error(&["--prompt", "  "], "the prompt is empty");
}

#[test]
fn max_tokens_out_of_range_is_refused_with_the_limit() {
    expect_error(&["--prompt", "hi", "--max-tokens", "0"], "`max_tokens` must be between 1 and 65536, got 0");
    expect_error(&["--prompt", "hi", "--max-tokens", "99999999"], "`max_tokens` must be between 1 and 65536");
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let long = "word ".repeat(200);
    expect_error(&["--prompt", &long, "--ctx-size", "64"], "but the context holds 64");
}

#[test]
fn missing_model_file_is_named() {
    let out = duet(&["generate", "--prompt", "hi", "--verifier-model", "/nonexistent/model.gguf"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/model.gguf does not exist"), "{stderr}");
}

#[test]
fn corrupt_model_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("duet-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("corrupt.gguf");
    std::fs::write(&bad, b"GGUF this is not a model").expect("write");
    let out = duet(&["generate", "--prompt", "hi", "--verifier-model", bad.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.lines().last().unwrap_or_default().contains("cannot load verifier model"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wrong_vocabulary_model_pair_is_refused() {
    let other = models_dir().join("smollm2-135m-instruct-q4_1.gguf");
    assert!(other.is_file(), "{} is missing: run scripts/fetch-models.sh smollm-135m", other.display());
    expect_error(
        &["--prompt", "hi", "--drafter", "ar-model", "--drafter-model", other.to_str().expect("utf-8")],
        "vocabularies differ",
    );
}

#[test]
fn json_output_has_text_tokens_and_stats_and_hybrid_equals_ar() {
    let model = small_model();
    let prompt = "Rename the variable x to total in this function and return the whole function:\n\n\
                  def add_all(items):\n    x = 0\n    for item in items:\n        x += item\n    return x\n";
    let run = |mode: &str| -> serde_json::Value {
        let out = duet(&[
            "generate", "--verifier-model", model.to_str().expect("utf-8"), "--chat", "--prompt", prompt,
            "--max-tokens", "48", "--mode", mode, "--drafter", "ngram", "--json",
            // A fixed block: the n-gram drafter must be seen to hit, whatever cost curve a busy
            // machine measures.
            "--draft-length", "fixed",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
    };
    let ar = run("ar");
    let hybrid = run("hybrid");
    assert_eq!(ar["token_ids"], hybrid["token_ids"]);
    assert_eq!(ar["text"], hybrid["text"]);
    assert!(ar["text"].as_str().expect("text").contains("total"));
    for key in [
        "prompt_tokens", "generated_tokens", "rounds", "drafted", "accepted", "mean_accepted_length",
        "wall_s", "tokens_per_s", "drafter_s", "verifier_s",
    ] {
        assert!(hybrid["stats"][key].is_number(), "stats.{key} missing: {hybrid}");
    }
    assert!(hybrid["stats"]["accepted"].as_u64().expect("accepted") > 0, "ngram should hit on a copy prompt");
    assert_eq!(ar["stats"]["mean_accepted_length"], 1.0);
}

#[test]
fn streamed_text_equals_json_text() {
    let model = small_model();
    let args = |json: bool| {
        let mut a = vec!["generate", "--verifier-model", model.to_str().expect("utf-8"), "--prompt", "def fib(n):", "--max-tokens", "24"];
        if json {
            a.push("--json");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |json| Command::new(env!("CARGO_BIN_EXE_duet")).args(args(json)).env("DUET_COST_CACHE", cost_cache()).output();
    let plain = run(false).expect("run");
    let json = run(true).expect("run");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let text = String::from_utf8_lossy(&plain.stdout);
    assert_eq!(text.strip_suffix('\n').expect("trailing newline"), v["text"].as_str().expect("text"));
}

#[test]
fn bad_sampling_flags_are_refused_with_the_field_named() {
    expect_error(&["--prompt", "hi", "--temperature=-1"], "`temperature` must be between 0 and 100");
    expect_error(&["--prompt", "hi", "--temperature", "0.7", "--top-p", "0"], "`top_p` must be in (0, 1]");
    expect_error(&["--prompt", "hi", "--top-k", "5"], "--top-k and --top-p only apply when sampling");
}

#[test]
fn a_seeded_sampled_hybrid_generation_is_reproducible_and_reports_its_draft_lengths() {
    let model = small_model();
    let run = |seed: &str| -> serde_json::Value {
        let out = duet(&[
            "generate", "--verifier-model", model.to_str().expect("utf-8"), "--prompt", "def fib(n):",
            "--max-tokens", "16", "--temperature", "0.9", "--top-p", "0.95", "--seed", seed, "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
    };
    let a = run("11");
    assert_eq!(a["token_ids"], run("11")["token_ids"]);
    let stats = &a["stats"];
    let rounds = stats["rounds"].as_u64().expect("rounds") as usize;
    assert_eq!(stats["draft_lengths"].as_array().expect("draft_lengths").len(), rounds);
    assert_eq!(stats["offered_lengths"].as_array().expect("offered_lengths").len(), rounds);
    assert_eq!(stats["cost_curve"][0], 1.0, "the cost-aware policy is the default: {stats}");
}
