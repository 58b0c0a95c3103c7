#!/usr/bin/env bash
# Duet against the engine a user would run instead, in one run (issue 25): builds stock llama.cpp's
# llama-server (scripts/stock-llama.sh: the tree inside PyPI's llama-cpp-python sdist, default
# options, static, into the git-ignored peers/), starts it on free loopback ports in three
# configurations on the same verifier model and threads as Duet —
#   llama-plain   plain decoding
#   llama-ngram   its n-gram speculative decoding (--spec-type ngram-simple)
#   llama-draft   classic speculative decoding, the 0.5B drafting (--spec-type draft-simple
#                 --spec-draft-model; without the type, this llama.cpp loads the draft model and
#                 never drafts)
# — and runs `duet bench` with the arguments given here plus one `--peer` for each, with
# `cache_prompt: false` so that every request evaluates its prompt as Duet's do. llama-plain is the
# baseline of the "× llama-plain" column. PEERS picks configurations (default plain,ngram,draft);
# DUET_THREADS the threads of both engines (default: the cores).
# Example: scripts/peers.sh --suite benches/data/edit.jsonl --limit 4 --max-tokens 64 --out bench-out/peers
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${DUET_THREADS:-$(nproc)}"
model="${PEER_MODEL:-models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}"
draft="${PEER_DRAFT_MODEL:-models/qwen2.5-coder-0.5b-instruct.gguf}"
peers="${PEERS:-plain,ngram,draft}"
[ -f "$model" ] && [ -f "$draft" ] || scripts/fetch-models.sh
scripts/stock-llama.sh
cargo build -q --release --workspace --bin duet
server=peers/llama.cpp/build/bin/llama-server
logs=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
args=()
for name in ${peers//,/ }; do
  case "$name" in
    plain) extra=() ;;
    ngram) extra=(--spec-type ngram-simple) ;;
    draft) extra=(--spec-type draft-simple --spec-draft-model "$draft" --spec-draft-threads "$threads") ;;
    *) echo "peers.sh: PEERS holds $name; the configurations are plain, ngram, draft" >&2; exit 2 ;;
  esac
  port=$(free_port)
  echo "[peers] llama-$name: llama-server on 127.0.0.1:$port (${extra[*]:-plain}), $threads threads, log $logs/$name.log" >&2
  "$server" -m "$model" -t "$threads" -tb "$threads" --host 127.0.0.1 --port "$port" "${extra[@]}" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$logs/$name.log" >&2; exit 1; }
    sleep 1
  done
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "[peers] llama-$name did not come up" >&2; exit 1; }
  args+=(--peer "llama-$name=http://127.0.0.1:$port,{\"cache_prompt\":false}")
done
target/release/duet bench --verifier-model "$model" --threads "$threads" "$@" "${args[@]}"
