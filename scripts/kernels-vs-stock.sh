#!/usr/bin/env bash
# Duet's verifier against stock llama.cpp's llama-bench, side by side on this machine (issue 24): one
# decode step, prompt evaluation of 512 tokens, and what a block of k drafts costs — one call of k + 1
# rows, in ms and in steps c(k) — for k = 1, 2, 4, 8, 16, 32, on the 1.5B and the 0.5B, same threads,
# flash attention on, on top of the same context depth (the demo prompt's tokens). Stock llama.cpp comes
# from scripts/stock-llama.sh. Run it on a quiet machine. Writes DIR/kernels.md and the raw JSON
# (default DIR bench-out/kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-out/kernels}"
threads="${DUET_THREADS:-$(nproc)}"
repeats="${KERNELS_REPEATS:-3}"
mkdir -p "$out"
scripts/stock-llama.sh
cargo build -q --release --workspace --bin duet
bench=peers/llama.cpp/build/bin/llama-bench
models=(models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf models/qwen2.5-coder-0.5b-instruct.gguf)
for m in "${models[@]}"; do
  [ -f "$m" ] || scripts/fetch-models.sh
done
for m in "${models[@]}"; do
  name=$(basename "$m" .gguf)
  echo "[kernels] $name: duet models costs" >&2
  target/release/duet models costs --verifier-model "$m" --threads "$threads" --sizes 1,2,4,8,16,32 \
    --repeats "$repeats" --prompt-eval 512 --json >"$out/$name.duet.json"
  depth=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prompt_tokens'])" "$out/$name.duet.json")
  echo "[kernels] $name: llama-bench at depth $depth" >&2
  "$bench" -m "$m" -t "$threads" -fa 1 -r "$repeats" -d "$depth" -p 2,3,5,9,17,33 -n 0 -o json >"$out/$name.blocks.json"
  "$bench" -m "$m" -t "$threads" -fa 1 -r "$repeats" -d "$depth" -p 0 -n 32 -o json >"$out/$name.step.json"
  "$bench" -m "$m" -t "$threads" -fa 1 -r "$repeats" -p 512 -n 0 -o json >"$out/$name.pp512.json"
done
python3 - "$out" "$threads" "${models[@]}" <<'PY'
import json, sys, os, datetime
out, threads, models = sys.argv[1], sys.argv[2], sys.argv[3:]
ks = [1, 2, 4, 8, 16, 32]
lines = [f"Duet's verifier against stock llama.cpp (llama-bench), {threads} threads, "
         f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", ""]
for m in models:
    name = os.path.basename(m)[:-5]
    duet = json.load(open(f"{out}/{name}.duet.json"))
    runs = json.load(open(f"{out}/{name}.blocks.json"))
    block_ms = {r["n_prompt"] - 1: r["avg_ns"] / 1e6 for r in runs}
    step = json.load(open(f"{out}/{name}.step.json"))[0]
    stock_step = step["avg_ns"] / 1e6 / step["n_gen"]
    pp = json.load(open(f"{out}/{name}.pp512.json"))[0]
    stock_pp = pp["n_prompt"] / (pp["avg_ns"] / 1e9)
    measured = dict((k, t) for k, t in duet["measured"])
    duet_step = measured[0] * 1e3
    duet_pp = duet["prompt_eval_tokens"] / duet["prompt_eval_s"]
    lines += [f"### {name} (context {duet['prompt_tokens']} tokens, Duet kernels: {duet['kernels']}, "
              f"batch-invariant: {'yes' if duet['batch_invariant'] else 'NO'})", "",
              "| | one step | prompt eval (512) | " + " | ".join(f"c({k})" for k in ks) + " |",
              "|---|---|---|" + "---|" * len(ks)]
    lines.append(f"| stock llama.cpp | {stock_step:.1f} ms | {stock_pp:.1f} tok/s | " +
                 " | ".join(f"{block_ms[k] / stock_step:.2f} ({block_ms[k]:.0f} ms)" for k in ks) + " |")
    lines.append(f"| Duet | {duet_step:.1f} ms | {duet_pp:.1f} tok/s | " +
                 " | ".join(f"{measured[k] * 1e3 / duet_step:.2f} ({measured[k] * 1e3:.0f} ms)" for k in ks) + " |")
    lines.append("")
lines.append("c(k): one call of k drafts + 1 token, in the engine's own steps (ms per call in brackets).")
open(f"{out}/kernels.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
