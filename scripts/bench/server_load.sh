#!/usr/bin/env bash
# Server under load: builds release, serves the tiny-guard checkpoint on a free loopback port and
# runs scripts/bench/load.py (closed loop, one JSON body) against POST /v1/moderate at rising
# concurrency, then the engine alone with `safeguard bench` on the same checkpoint for the
# server's overhead. Bounded: DURATION seconds per level (default 3).
#
#   scripts/bench/server_load.sh            # levels 1 4 16, 3 s each
#   DURATION=5 LEVELS="1 2 4 8 16" scripts/bench/server_load.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-3}
LEVELS=${LEVELS:-"1 4 16"}
MODEL=${MODEL:-crates/safeguard-engine/tests/fixtures/tiny-guard}
IMAGE=${IMAGE:-$MODEL/image-a.png}
POLICY=${POLICY:-L3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p safeguard-cli
BIN=$CARGO_TARGET_DIR/release/safeguard
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 - "$IMAGE" "$POLICY" > "$WORK/body.json" <<'PY'
import base64, json, sys
print(json.dumps({"image": base64.b64encode(open(sys.argv[1], "rb").read()).decode(),
                  "policy": sys.argv[2]}))
PY

"$BIN" serve --backend local --model "$MODEL" --addr 127.0.0.1:0 --queue-capacity 1024 \
    2> "$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do
    grep -q "listening on" "$WORK/server.log" 2>/dev/null && break
    sleep 0.1
done
URL=$(grep -o "http://[0-9.:]*" "$WORK/server.log" | head -1)
[ -n "$URL" ] || { cat "$WORK/server.log"; exit 1; }
echo "server: $URL ($(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(date -u +%F))"
# Warm up (prefix cache, allocator), then the levels.
python3 scripts/bench/load.py --url "$URL/v1/moderate" --body "$WORK/body.json" \
    --concurrency 1 --duration 1 > /dev/null
for c in $LEVELS; do
    python3 scripts/bench/load.py --url "$URL/v1/moderate" --body "$WORK/body.json" \
        --concurrency "$c" --duration "$DURATION"
done
curl -s "$URL/metrics" | grep -E "^safeguard_(batch_size_(sum|count)|prefix_cache_(hits|misses)_total) " || true
kill $SERVER; wait $SERVER 2>/dev/null || true
echo "engine alone (safeguard bench, same checkpoint):"
"$BIN" bench --model "$MODEL" --requests 16 2>&1 | tail -n 20
