#!/usr/bin/env bash
# Server under load, and its overhead over the engine alone on the same input.
#
# Builds release, serves a checkpoint on a free loopback port and runs scripts/bench/load.py
# (closed loop, one JSON body: IMAGE under POLICY, score mode, rule questions on) against
# POST /v1/moderate at rising concurrency. Then measures the engine alone with `safeguard bench`
# on the same checkpoint, the same single image, the same policy and pixel bound (score mode,
# batch 1, prefix cache on, as the server runs it), and prints the server's overhead per request
# at concurrency 1: server p50 latency minus engine p50 time per image.
#
#   scripts/bench/server_load.sh                  # tiny-guard checkpoint, image-a.png, 1 4 16
#   SHAPE=small scripts/bench/server_load.sh      # random-weight `small` checkpoint (Qwen2.5-0.5B
#                                                 # text stack, 8-block vision tower; written by
#                                                 # `safeguard debug random-model`), coffee.jpg;
#                                                 # needs scripts/fetch-tokenizer
#   DURATION=5 LEVELS="1 2 4 8 16" scripts/bench/server_load.sh
#   SERVE_ARGS="--max-wait-ms 0" scripts/bench/server_load.sh   # extra `safeguard serve` flags
#
# Bounded: DURATION seconds per level (default 3) after a warm-up; the engine step judges
# ENGINE_REQUESTS images (default 48).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-3}
LEVELS=${LEVELS:-"1 4 16"}
POLICY=${POLICY:-L3}
ENGINE_REQUESTS=${ENGINE_REQUESTS:-48}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p safeguard-cli
BIN=$CARGO_TARGET_DIR/release/safeguard
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT

if [ -n "${SHAPE:-}" ]; then
    MODEL=$WORK/model-$SHAPE
    TOKENIZER=${TOKENIZER:-target/assets/qwen-tokenizer/tokenizer.json}
    "$BIN" debug random-model --shape "$SHAPE" --tokenizer "$TOKENIZER" --dtype bf16 --out "$MODEL"
    IMAGE=${IMAGE:-examples/images/coffee.jpg}
else
    MODEL=${MODEL:-crates/safeguard-engine/tests/fixtures/tiny-guard}
    IMAGE=${IMAGE:-$MODEL/image-a.png}
fi
# The server reads the pixel bound from the checkpoint; the engine bench is given the same.
MAX_PIXELS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['max_pixels'])" \
    "$MODEL/preprocessor_config.json")

python3 - "$IMAGE" "$POLICY" > "$WORK/body.json" <<'PY'
import base64, json, sys
print(json.dumps({"image": base64.b64encode(open(sys.argv[1], "rb").read()).decode(),
                  "policy": sys.argv[2]}))
PY

# shellcheck disable=SC2086
"$BIN" serve --backend local --model "$MODEL" --addr 127.0.0.1:0 --queue-capacity 1024 \
    ${SERVE_ARGS:-} 2> "$WORK/server.log" &
SERVER=$!
for _ in $(seq 600); do
    grep -q "^ready: " "$WORK/server.log" 2>/dev/null && break
    sleep 0.1
done
URL=$(grep -o "http://[0-9.:]*" "$WORK/server.log" | head -1)
[ -n "$URL" ] || { cat "$WORK/server.log"; exit 1; }
echo "model: $MODEL; image: $IMAGE; policy: $POLICY; max_pixels: $MAX_PIXELS; serve ${SERVE_ARGS:-}"
echo "server: $URL ($(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(date -u +%F))"
# Warm up (prefix cache, allocator), then the levels.
python3 scripts/bench/load.py --url "$URL/v1/moderate" --body "$WORK/body.json" \
    --concurrency 1 --duration 1 > /dev/null
for c in $LEVELS; do
    python3 scripts/bench/load.py --url "$URL/v1/moderate" --body "$WORK/body.json" \
        --concurrency "$c" --duration "$DURATION" | tee -a "$WORK/levels.jsonl"
done
curl -s "$URL/metrics" | grep -E "^safeguard_(batch_size_(sum|count)|prefix_cache_(hits|misses)_total) " || true
kill $SERVER; wait $SERVER 2>/dev/null || true
SERVER=

mkdir "$WORK/images"
cp "$IMAGE" "$WORK/images/"
echo "engine alone (safeguard bench: same model, image, policy, pixel bound; score, batch 1, cache on):"
"$BIN" bench --model "$MODEL" --images "$WORK/images" --requests "$ENGINE_REQUESTS" \
    --policy "$POLICY" --max-pixels "$MAX_PIXELS" --mode score --cache on --batch-sizes 1 \
    --json "$WORK/engine.json" 2>&1 | tail -n 8
python3 - "$WORK/levels.jsonl" "$WORK/engine.json" <<'PY'
import json, sys
levels = [json.loads(l) for l in open(sys.argv[1])]
one = next((l for l in levels if l["concurrency"] == 1), None)
engine = json.load(open(sys.argv[2]))["results"][0]
e50 = engine["ms_per_image_p50"]
print(f"engine: {engine['images_per_s']:.1f} images/s, p50 {e50:.2f} ms per image")
if one is None:
    sys.exit("no concurrency-1 level: cannot compute the overhead")
s50 = one["p50_ms"]
print(f"server at concurrency 1: {one['rps']:.1f} req/s, p50 {s50:.2f} ms")
print(f"server overhead per request (p50): {s50 - e50:.2f} ms ({(s50 - e50) / s50 * 100:.0f}% of "
      f"the request; engine/server throughput {one['rps'] / engine['images_per_s']:.2f})")
PY
