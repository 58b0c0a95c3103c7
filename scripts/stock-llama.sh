#!/usr/bin/env bash
# Fetches and builds stock llama.cpp — the tree inside PyPI's llama-cpp-python sdist, with llama.cpp's
# default options (weight repacking and tiled kernels on), statically linked — into peers/llama.cpp
# (git-ignored): llama-bench and llama-server, the engine Duet is measured against. Does nothing when
# both are built. About 6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${STOCK_LLAMA_CPP_PYTHON:-0.3.36}"
dir=peers/llama.cpp
if [ -x "$dir/build/bin/llama-bench" ] && [ -x "$dir/build/bin/llama-server" ]; then
  echo "[stock] $dir/build/bin has llama-bench and llama-server" >&2
  exit 0
fi
scripts/install-deps.sh
mkdir -p peers/download
echo "[stock] fetching llama-cpp-python==$version (sdist)" >&2
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d peers/download
rm -rf peers/src "$dir"
mkdir -p peers/src
tar -xzf "peers/download/llama_cpp_python-$version.tar.gz" -C peers/src
mv "peers/src/llama_cpp_python-$version/vendor/llama.cpp" "$dir"
rm -rf peers/src
echo "[stock] building llama-bench and llama-server (~6 min on 2 cores)" >&2
cmake -S "$dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$dir/build" -j"$(nproc)" --target llama-bench llama-server >/dev/null
echo "[stock] built $dir/build/bin/llama-bench and llama-server" >&2
