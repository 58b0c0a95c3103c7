#!/usr/bin/env bash
# One command from a fresh Debian 12 + Rust machine to Duet's main job: installs the system packages,
# fetches the default models into models/, builds the release binary, and runs the default verifier
# (Qwen2.5-Coder-1.5B) on a copy-heavy edit prompt twice — verifier-only and hybrid — so the two
# can be compared side by side (the outputs are token-identical; the time is not).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/fetch-models.sh
echo "[setup] building the release binary (first build compiles llama.cpp, ~5 min on 2 cores)" >&2
cargo build --release --workspace
duet=target/release/duet

prompt=scripts/demo-prompt.txt
for mode in ar hybrid; do
  echo "[setup] duet generate --mode $mode --drafter ngram --chat --prompt-file $prompt --max-tokens 160" >&2
  "$duet" generate --mode "$mode" --drafter ngram --chat --prompt-file "$prompt" --max-tokens 160
done
