#!/usr/bin/env bash
# The load test of issue 9: 16 concurrent streaming clients against `duet serve` (started on a free
# loopback port with Qwen2.5-Coder-0.5B) for two minutes. Every greedy answer must equal its
# verifier-only reference, the server's memory must stay bounded and it must hold no session once
# idle; prints throughput and p50/p99 latency. Stops by itself. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p duet-orchestrator --bin duet
mkdir -p target
exec target/debug/duet loadtest --clients "${DUET_LOAD_CLIENTS:-16}" --duration "${DUET_LOAD_SECONDS:-120}" \
  --out target/loadtest.json "$@"
