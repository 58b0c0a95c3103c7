#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 + Rust machine: installs the system packages, fetches
# the models the tests use (the real Qwen2.5-Coder-0.5B, the tokenizer, and SmolLM2-135M for the
# wrong-vocabulary check), then runs every test of the workspace and the OpenAI client test of
# `duet serve` (scripts/test-openai.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/fetch-models.sh qwen-0.5b tokenizer smollm-135m
cargo test --workspace "$@"
# The OpenAI-compatible server against the official `openai` Python client.
scripts/test-openai.sh
