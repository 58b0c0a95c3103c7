#!/usr/bin/env bash
# Installs the system packages Duet's build needs on Debian: cmake and libclang-dev (bindgen for
# llama-cpp-2). Does nothing when they are present. protoc is not needed (a vendored binary is used).
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Python with venv for the OpenAI client test of `duet serve` (scripts/test-openai.sh).
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] system packages present" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "[deps] installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
echo "[deps] installed ${missing[*]}" >&2
