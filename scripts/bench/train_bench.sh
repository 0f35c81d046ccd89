#!/usr/bin/env bash
# LoRA SFT training speed and peak memory: SafeGuard (`safeguard train bench`, candle) against
# PyTorch + PEFT (scripts/bench/train_bench.py) on the same random-weight Qwen2.5-VL shape, the
# same synthetic sequence and image, the same LoRA and the same steps, with per-layer
# recomputation (gradient checkpointing) on and off. The four runs go one after the other, never
# together. Each writes one JSON line to OUT/<impl>-<recompute>.json (stderr to .log); then a
# Markdown table:
#   | implementation | recompute | seq_len | step s | tokens/s | peak RSS MiB | peak − loaded MiB | loss | LoRA params |
# with, per recompute setting, a row of ratios (tokens/s ours/theirs, peak memory ours/theirs).
#
# Usage: scripts/bench/train_bench.sh [--shape tiny|small|7b] [--binary BIN] [--out DIR]
#          [--seq-len N] [--grid G] [--target-tokens T] [--rank R] [--batch B] [--steps S]
#          [--threads N] [--attn eager|sdpa]
# Defaults: --shape small, --binary target/release/safeguard, --out /tmp/train-bench; the other
# options take the defaults of `safeguard train bench` when not given. --threads sets both
# torch.set_num_threads and RAYON_NUM_THREADS (default: all cores for both).
# The Python side runs with $PYTHON (default python3), which needs torch, transformers 5.x and
# peft (set PYTHONPATH as needed).
set -euo pipefail
cd "$(dirname "$0")/../.."

SHAPE=small
BIN=target/release/safeguard
OUT=/tmp/train-bench
PYTHON=${PYTHON:-python3}
THREADS=
ATTN=eager
COMMON=()
while [ $# -gt 0 ]; do
    case "$1" in
        --shape) SHAPE=$2; shift 2 ;;
        --binary) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --attn) ATTN=$2; shift 2 ;;
        --seq-len|--grid|--target-tokens|--rank|--batch|--steps) COMMON+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release -p safeguard-cli)" >&2; exit 1; }
mkdir -p "$OUT"
PY_THREADS=()
if [ -n "$THREADS" ]; then
    export RAYON_NUM_THREADS=$THREADS
    PY_THREADS=(--threads "$THREADS")
fi

echo "## LoRA SFT step: safeguard vs PyTorch + PEFT (shape $SHAPE)"
echo
model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { case " $flags " in *" $1 "*) echo yes ;; *) echo no ;; esac; }
echo "- CPU: ${model:-unknown}; avx2: $(has avx2), avx512f: $(has avx512f); nproc: $(nproc)"
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); commit: $(git rev-parse --short HEAD 2>/dev/null || echo -)"
echo "- safeguard: $("$BIN" --version 2>/dev/null || echo '?') ($BIN)"
echo "- $("$PYTHON" - <<'PY' 2>/dev/null || echo 'python: versions unavailable'
import platform, torch, transformers, peft
print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, peft {peft.__version__}")
PY
)"
echo "- options: ${COMMON[*]:-(defaults)} threads=${THREADS:-all} attn=$ATTN"
echo

config="$OUT/config-$SHAPE.json"
for rec in recompute no-recompute; do
    flag=()
    [ "$rec" = no-recompute ] && flag=(--no-recompute)
    echo "running safeguard ($rec)..." >&2
    "$BIN" train bench --shape "$SHAPE" "${COMMON[@]}" "${flag[@]}" --write-config "$config" \
        >"$OUT/safeguard-$rec.json" 2>"$OUT/safeguard-$rec.log" \
        || { echo "safeguard failed, see $OUT/safeguard-$rec.log" >&2; tail -5 "$OUT/safeguard-$rec.log" >&2; exit 1; }
    echo "running pytorch+peft ($rec)..." >&2
    "$PYTHON" scripts/bench/train_bench.py --config "$config" "${COMMON[@]}" "${flag[@]}" \
        "${PY_THREADS[@]}" --attn "$ATTN" \
        >"$OUT/pytorch-$rec.json" 2>"$OUT/pytorch-$rec.log" \
        || { echo "pytorch failed, see $OUT/pytorch-$rec.log" >&2; tail -5 "$OUT/pytorch-$rec.log" >&2; exit 1; }
done

"$PYTHON" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def load(name):
    with open(f"{out}/{name}.json") as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
    return json.loads(lines[-1])
print("| implementation | recompute | seq_len | step s | tokens/s | peak RSS MiB | peak − loaded MiB | loss | LoRA params |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
problems = []
for rec in ["recompute", "no-recompute"]:
    ours, theirs = load(f"safeguard-{rec}"), load(f"pytorch-{rec}")
    for r in (ours, theirs):
        print(f"| {r['implementation']} | {'on' if r['recompute'] else 'off'} | {r['seq_len']} "
              f"| {r['step_seconds']:.3f} | {r['tokens_per_second']:.1f} | {r['peak_rss_mib']:.0f} "
              f"| {r['peak_rss_mib'] - r['loaded_rss_mib']:.0f} | {r['loss']:.4f} | {r['lora_parameters']} |")
    ratio = lambda a, b: f"{a / b:.2f}×" if b else "-"
    grown = lambda r: r["peak_rss_mib"] - r["loaded_rss_mib"]
    print(f"| **ours/theirs** | {'on' if ours['recompute'] else 'off'} | | "
          f"| {ratio(ours['tokens_per_second'], theirs['tokens_per_second'])} "
          f"| {ratio(ours['peak_rss_mib'], theirs['peak_rss_mib'])} "
          f"| {ratio(grown(ours), grown(theirs))} | | |")
    for key in ("lora_parameters", "seq_len", "batch", "rank", "recompute"):
        if ours[key] != theirs[key]:
            problems.append(f"{rec}: {key} differs: safeguard {ours[key]}, pytorch {theirs[key]}")
print()
print("tokens/s ours/theirs above 1 means faster; peak memory ours/theirs below 1 means less.")
for p in problems:
    print(f"WARNING: {p}")
sys.exit(1 if problems else 0)
PY
