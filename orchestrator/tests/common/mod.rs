//! Helpers shared by the orchestrator's integration tests that load the real models.

use std::path::PathBuf;

/// The real Qwen2.5-Coder-0.5B in `$DUET_MODELS_DIR` or `models/`; the test fails (not skips) when
/// it is missing.
pub fn small_model() -> PathBuf {
    let dir = std::env::var_os("DUET_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let p = dir.join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh qwen-0.5b", p.display());
    p
}
