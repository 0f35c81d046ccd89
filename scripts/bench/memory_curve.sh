#!/usr/bin/env bash
# Peak memory of `safeguard check` against image size, eager vs tiled attention, on the tiny
# trained checkpoint with the released checkpoints' pixel bounds (max_pixels 12845056), so
# that the image, not the weights, decides the memory. Prints one Markdown row per run:
#   | image | patches | image tokens | attention | peak RSS MiB | wall s |
# Usage: scripts/bench/memory_curve.sh [BIN]   (default target/release/safeguard)
# The eager runs stop at the size where they would need more than LIMIT_GB (default 12) of
# scores; they are reported as "not run" with the score memory they would need.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/safeguard}
LIMIT_GB=${LIMIT_GB:-12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model="$work/model"
mkdir -p "$model"
cp crates/safeguard-engine/tests/fixtures/tiny-guard/* "$model/"
cat > "$model/preprocessor_config.json" <<'JSON'
{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
 "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
 "image_std": [0.26862954, 0.26130258, 0.27577711]}
JSON
echo "| image | patches | image tokens | attention | peak RSS MiB | wall s |"
echo "| --- | --- | --- | --- | --- | --- |"
for size in 640x480 1280x960 1920x1440 2560x1920 3200x2400 4000x3000; do
    w=${size%x*}; h=${size#*x}
    python3 - "$w" "$h" "$work/img.png" <<'PY'
import sys, zlib, struct
w, h, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
# A photo-like pattern: gradients plus a checkerboard, compressed as a camera PNG would be.
base = bytes(v for x in range(w) for v in (x % 256, (x // 3) % 256, 0))
rows = []
for y in range(h):
    shift = (y // 125) % 2 * 120
    rows.append(b"\x00" + bytes((b + y + shift) & 255 for b in base))
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows), 1)) + chunk(b"IEND", b"")
open(out, "wb").write(png)
PY
    # Patches after smart_resize (factor 28, the bounds above).
    read patches tokens < <(python3 -c "
import math
h,w,f,mx=$h,$w,28,12845056
hb=round(h/f)*f; wb=round(w/f)*f
if hb*wb>mx:
    b=math.sqrt(h*w/mx); hb=max(f,math.floor(h/b/f)*f); wb=max(f,math.floor(w/b/f)*f)
p=(hb//14)*(wb//14); print(p, p//4)")
    for attention in eager tiled; do
        # Eager full-attention vision scores: 2 heads x patches^2 x 4 bytes (f32), plus a copy.
        need=$(python3 -c "print(2*$patches**2*4*2/2**30)")
        if [ "$attention" = eager ] && python3 -c "import sys; sys.exit(0 if $need > $LIMIT_GB else 1)"; then
            printf "| %s | %s | %s | eager | not run (needs %.0f GiB of scores) | - |\n" "$size" "$patches" "$tokens" "$need"
            continue
        fi
        start=$(date +%s.%N)
        /usr/bin/time -f "%M" -o "$work/rss" "$BIN" check "$work/img.png" --model "$model" \
            --policy "No photos of weapons or of people smoking." --attention "$attention" --json >/dev/null 2>"$work/err" \
            || { echo "failed: $(cat "$work/err")" >&2; exit 1; }
        end=$(date +%s.%N)
        kib=$(tail -1 "$work/rss")
        printf "| %s | %s | %s | %s | %d | %.1f |\n" "$size" "$patches" "$tokens" "$attention" $((kib / 1024)) "$(python3 -c "print($end-$start)")"
    done
done
