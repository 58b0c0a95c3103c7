//! `duet generate` on bad flags (issue 9): exactly one `error:` line on stderr naming the flag and
//! its limit, nothing on stdout, exit code 1, never a panic. The verifier path points nowhere, so a
//! flag checked only after loading a model would fail differently: every check here comes first.

use std::process::Command;

/// Runs `duet generate` with `extra` and checks the one-line refusal holds every needle.
fn refused(extra: &[&str], needles: &[&str]) {
    let mut args = vec!["generate", "--verifier-model", "/nonexistent/duet-model.gguf"];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(&args)
        .env_remove("DUET_VERIFIER_MODEL")
        .env_remove("DUET_DRAFTER_MODEL")
        .output()
        .expect("running duet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code for {extra:?}; stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout for {extra:?}: {}", String::from_utf8_lossy(&out.stdout));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for {extra:?}, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{extra:?}: {stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "for {extra:?} expected `{needle}` in: {stderr}");
    }
}

#[test]
fn out_of_range_token_limits_name_the_flag_and_the_limit() {
    refused(&["--prompt", "hi", "--max-tokens", "0"], &["between 1 and 65536, got 0", "(--max-tokens)"]);
    refused(&["--prompt", "hi", "--max-tokens", "65537"], &["between 1 and 65536, got 65537", "(--max-tokens)"]);
    refused(&["--prompt", "hi", "--block-size", "0"], &["between 1 and 256, got 0", "(--block-size)"]);
    refused(&["--prompt", "hi", "--block-size", "257"], &["between 1 and 256, got 257", "(--block-size)"]);
}

#[test]
fn bad_sampling_values_name_the_flag_and_the_limit() {
    refused(&["--prompt", "hi", "--temperature", "101"], &["between 0 and 100, got 101", "(--temperature)"]);
    refused(&["--prompt", "hi", "--temperature=-1"], &["between 0 and 100, got -1", "(--temperature)"]);
    refused(&["--prompt", "hi", "--temperature", "NaN"], &["between 0 and 100, got NaN", "(--temperature)"]);
    refused(&["--prompt", "hi", "--temperature", "0.5", "--top-p", "1.5"], &["in (0, 1], got 1.5", "(--top-p)"]);
    refused(&["--prompt", "hi", "--top-k", "5"], &["--top-k", "--temperature above 0"]);
    refused(&["--prompt", "hi", "--draft-steps", "0"], &["at least 1, got 0", "(--draft-steps)"]);
    refused(&["--prompt", "hi", "--draft-guidance", "11"], &["between 0 and 10, got 11", "(--draft-guidance)"]);
    refused(&["--prompt", "hi", "--draft-threshold", "0"], &["in (0, 1], got 0", "(--draft-threshold)"]);
    refused(&["--prompt", "hi", "--draft-temperature=-2"], &[">= 0, got -2", "(--draft-temperature)"]);
}

#[test]
fn values_of_the_wrong_type_name_the_flag() {
    refused(&["--prompt", "hi", "--max-tokens", "ten"], &["invalid value 'ten' for '--max-tokens"]);
    refused(&["--prompt", "hi", "--max-tokens=-5"], &["invalid value '-5' for '--max-tokens"]);
    refused(&["--prompt", "hi", "--seed=-1"], &["invalid value '-1' for '--seed"]);
    refused(&["--prompt", "hi", "--temperature", "warm"], &["invalid value 'warm' for '--temperature"]);
    refused(&["--prompt", "hi", "--mode", "fast"], &["invalid value 'fast' for '--mode", "ar, hybrid, diffusion"]);
    refused(&["--prompt", "hi", "--frobnicate"], &["unexpected argument '--frobnicate'"]);
    refused(&[], &["required arguments were not provided", "--prompt"]);
}

#[test]
fn a_prompt_file_that_is_not_utf8_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, b"fn main() { \xff }").expect("write");
    refused(&["--prompt-file", file.to_str().expect("utf-8 path")], &["--prompt-file", "valid UTF-8"]);
    refused(&["--prompt", " \n "], &["the prompt is empty"]);
}
