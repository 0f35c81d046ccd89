#!/usr/bin/env python3
"""Decode + preprocess throughput: SafeGuard (Rust) against the Python reference, same run.

The reference is what transformers does for an image file: `PIL.Image.open`, `exif_transpose`,
then `Qwen2VLImageProcessorPil` (convert to RGB, smart resize, PIL bicubic, rescale, normalize,
patchify) with its default pixel bounds. Both sides run on one core (`taskset -c 0` when
available, BLAS/OpenMP threads = 1) over the same JPEG files, each for at least --seconds.

Test photos: the scikit-image wheel's public-domain/CC0 photos (astronaut, chelsea, coffee,
rocket), resized to 1024x768 and saved as JPEG quality 90 (4:2:0), i.e. "typical photos".
Get them with:  pip download --no-deps scikit-image  and unzip the wheel; pass --photos
path/to/skimage/data. Without --photos, synthetic 1024x768 photo-like images are used.

Run from the repository root:
    python3 scripts/bench/preprocess_reference.py --photos /tmp/skimage/skimage/data
Prints a Markdown table row set for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]


def make_inputs(out: Path, photos: Path | None, size=(1024, 768)) -> list[Path]:
    paths = []
    sources = []
    if photos is not None:
        sources = [Image.open(photos / name).convert("RGB") for name in PHOTOS]
    else:
        rng = np.random.default_rng(0)
        for _ in range(4):
            base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            sources.append(Image.fromarray(base).resize(size, Image.BICUBIC))
    for i, img in enumerate(sources):
        path = out / f"photo{i}.jpg"
        img.resize(size, Image.BICUBIC).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def reference(paths: list[Path], seconds: float) -> dict:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil()
    blobs = [p.read_bytes() for p in paths]

    def one(data: bytes):
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        return proc(images=img, return_tensors="np")

    for data in blobs:
        one(data)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < len(blobs):
        one(blobs[done % len(blobs)])
        done += 1
    elapsed = time.perf_counter() - start
    return {"images": done, "seconds": elapsed, "images_per_s": done / elapsed, "ms_per_image": 1000 * elapsed / done}


def rust(images: Path, seconds: float, pin: list[str]) -> dict:
    env = dict(os.environ, CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
    subprocess.run(["cargo", "bench", "-p", "safeguard-vision", "--bench", "preprocess", "--no-run"], check=True, cwd=ROOT, env=env)
    out = subprocess.run(
        pin + ["cargo", "bench", "-q", "-p", "safeguard-vision", "--bench", "preprocess", "--", str(images), str(seconds)],
        check=True, cwd=ROOT, env=env, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, help="skimage/data directory (else synthetic images)")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    if pin:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), args.photos)
        ours = rust(Path(tmp), args.seconds, pin)
        ref = reference(paths, args.seconds)
    import PIL
    import transformers

    ratio = ours["images_per_s"] / ref["images_per_s"]
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; pinned to one core: {bool(pin)}")
    print(f"inputs: {len(paths)} x 1024x768 JPEG q90 ({'skimage photos' if args.photos else 'synthetic'})")
    print(f"versions: transformers {transformers.__version__}, Pillow {PIL.__version__}, numpy {np.__version__}")
    print("| implementation | images/s | ms/image |")
    print("| --- | ---: | ---: |")
    print(f"| safeguard-vision (Rust) | {ours['images_per_s']:.1f} | {ours['ms_per_image']:.2f} |")
    print(f"| Qwen2VLImageProcessorPil (Python) | {ref['images_per_s']:.1f} | {ref['ms_per_image']:.2f} |")
    print(f"ratio: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
