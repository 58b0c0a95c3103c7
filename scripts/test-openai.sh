#!/usr/bin/env bash
# Drives a live `duet serve` (Qwen2.5-Coder-0.5B verifier) with the official `openai` Python package
# from PyPI (installed into target/openai-venv): chat and completions, streamed and not, usage, a stop
# sequence, errors; greedy outputs must equal `duet generate --json`. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.51.0
venv=target/openai-venv
if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  echo "[openai] installing openai==$OPENAI_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION"
fi
cargo build -q -p duet-orchestrator --bin duet
export DUET_BIN="$PWD/target/debug/duet"
export DUET_TEST_MODEL="${DUET_MODELS_DIR:-$PWD/models}/qwen2.5-coder-0.5b-instruct.gguf"
exec "$venv/bin/python" tests/openai_client/test_openai_client.py
