//! `duet serve` start-up checks: one `error:` line and exit code 1, never a panic.

use std::process::Command;

fn serve(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_duet"))
        .arg("serve")
        .args(args)
        .env_remove("DUET_API_KEY")
        .env_remove("DUET_ALLOW_UNAUTHENTICATED")
        .env_remove("DUET_HTTP_LISTEN")
        .env_remove("DUET_GRPC_LISTEN")
        .output()
        .expect("running duet serve");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn expect_error(args: &[&str], needle: &str) {
    let (ok, stderr) = serve(args);
    assert!(!ok, "{args:?} should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains(needle), "for {args:?} expected `{needle}`, got: {stderr}");
}

#[test]
fn a_public_address_without_an_api_key_is_refused() {
    expect_error(&["--http-listen", "0.0.0.0:0"], "is not a loopback address and no API key is set");
}

#[test]
fn a_public_grpc_address_is_refused_without_allow_unauthenticated() {
    expect_error(&["--grpc-listen", "0.0.0.0:0"], "the gRPC service takes no API keys");
}

#[test]
fn a_default_drafter_that_is_not_loaded_is_refused() {
    expect_error(&["--drafter", "ar-model"], "the default drafter `ar-model` is not among --drafters");
}

#[test]
fn a_missing_model_ends_the_server_with_its_name() {
    expect_error(&["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--verifier-model", "/nonexistent/model.gguf"], "/nonexistent/model.gguf");
}
