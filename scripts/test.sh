#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 + Rust machine: installs the system packages, fetches
# the models the tests use (the real Qwen2.5-Coder-0.5B, the tokenizer, and SmolLM2-135M for the
# wrong-vocabulary check), then runs every test of the workspace, the OpenAI client test of
# `duet serve` (scripts/test-openai.sh) and the load test (scripts/load-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/fetch-models.sh qwen-0.5b tokenizer smollm-135m
cargo test --workspace "$@"
# The OpenAI-compatible server against the official `openai` Python client.
scripts/test-openai.sh
# 16 concurrent streaming clients for two minutes; every answer checked against its reference.
scripts/load-test.sh
