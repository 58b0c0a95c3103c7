#!/usr/bin/env bash
# The README's results table in one command (issues 5, 25): every Duet mode (ar, hybrid with each
# drafter, diffusion) in process, beside stock llama-server plain, with its n-gram speculation and
# with the 0.5B drafting (scripts/peers.sh starts them on loopback with the same model and
# threads), on the three suites at concurrency 1 and 4. Writes DIR (default bench-out/full):
# results.json, results.md (its "Against the peers" table is the README's), SVG plots with the
# peers beside Duet's modes. About 20 minutes on a 2-core machine with the defaults. Run it on a
# quiet machine: timings taken while something else computes are noise (the report records the
# load average). Duet through its own HTTP server: `duet bench --server URL` (docs/bench.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-out/full}"
limit="${DUET_BENCH_LIMIT:-4}"
tokens="${DUET_BENCH_TOKENS:-64}"
repeats="${DUET_BENCH_REPEATS:-1}"
[ -f benches/data/humaneval.jsonl ] || scripts/fetch-data.sh
scripts/peers.sh --suite benches/data/chat.jsonl --suite benches/data/edit.jsonl --suite benches/data/humaneval.jsonl \
  --limit "$limit" --max-tokens "$tokens" --repeats "$repeats" --concurrency 1,4 --out "$out"
