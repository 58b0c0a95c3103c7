#!/usr/bin/env bash
# The latency comparison behind the README's results tables (issue 5), in one command:
#   1. in process: every mode (ar, hybrid with each drafter, diffusion) on the three suites, at
#      concurrency 1 and 4, each group run DUET_BENCH_REPEATS times with the fastest run kept;
#   2. through the server: ar and the hybrid modes via a `duet serve` this script starts on a free
#      loopback port with the same models and threads, at concurrency 1 and 4.
# Writes DIR/in-process and DIR/server (results.json, results.md, SVG plots); default DIR bench-out.
# The defaults take about an hour on a 2-core machine (the README's run, 6 and 3 prompts: 44 minutes).
# Run it on a quiet machine: timings taken while something else computes are noise (the report
# records the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-out}"
limit="${DUET_BENCH_LIMIT:-8}"
server_limit="${DUET_BENCH_SERVER_LIMIT:-4}"
tokens="${DUET_BENCH_TOKENS:-64}"
repeats="${DUET_BENCH_REPEATS:-1}"

cargo build -q --release --workspace --bin duet
mkdir -p "$out"
[ -f benches/data/humaneval.jsonl ] || scripts/fetch-data.sh
duet=target/release/duet
suites=(--suite benches/data/chat.jsonl --suite benches/data/edit.jsonl --suite benches/data/humaneval.jsonl)

echo "== in process: $limit prompts per suite, up to $tokens tokens, $repeats run(s) each" >&2
"$duet" bench "${suites[@]}" --limit "$limit" --max-tokens "$tokens" --repeats "$repeats" \
  --concurrency 1,4 --out "$out/in-process"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== through duet serve on 127.0.0.1:$port: $server_limit prompts per suite" >&2
"$duet" serve --http-listen "127.0.0.1:$port" --grpc-listen off --drafters ngram,diffusion,ar-model \
  --max-sessions 4 >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
  sleep 1
done
"$duet" bench "${suites[@]}" --limit "$server_limit" --max-tokens "$tokens" --repeats "$repeats" \
  --concurrency 1,4 --modes ar,hybrid-ngram,hybrid-diffusion,hybrid-ar-model \
  --server "http://127.0.0.1:$port" --server-only --out "$out/server"
