#!/usr/bin/env python3
"""Guard throughput, PyTorch/transformers vs `safeguard bench`, on the same random-weight shape.

Builds `Qwen2_5_VLForConditionalGeneration` from a config equal to the Rust shape
(`safeguard_engine::shapes`: tiny, small, 7b), random init (only speed is compared), same dtype,
same thread count (`torch.set_num_threads`, `RAYON_NUM_THREADS` for ours), and runs the same
workload on the same images:

- the prompt text comes from our binary (`safeguard policy render POLICY --format verdict|reasoning`,
  and `--rule ID` per prohibited rule when rules are on), the `<|image_pad|>` expanded to the
  image's token count;
- images: `Qwen2VLImageProcessorPil` with the same max_pixels (min 3136), decoded from the file
  bytes inside the timed region (ours decodes inside `judge` too);
- score mode: one forward pass (`logits_to_keep=1`) per image, or per padded batch (left padding);
  with rules on, one more full forward per rule question (transformers gets no KV reuse here);
- reason mode: `generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)`.

transformers runs WITHOUT a policy-prefix cache: every request recomputes the whole prompt.
Ours is measured with the cache off and on; the ratio is given for both.

Then it runs `safeguard bench` with the same settings and prints a side-by-side table with the
ratio (ours / transformers, images/s) per configuration, and writes both to --json.

    cargo build --release -p safeguard-cli
    python3 scripts/bench/guard_reference.py --shape small --threads 2 --requests 8 \
        --score-batches 1,4 --reason-batches 1 --max-new-tokens 16 --no-rules --json /tmp/guard.json

Needs torch, transformers 5.x, tokenizers and Pillow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tokenizers import Tokenizer
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

ROOT = Path(__file__).resolve().parents[2]
IMAGE_PAD = "<|image_pad|>"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

# The shapes of crates/safeguard-engine/src/shapes.rs.
SHAPES = {
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, mrope_section=[1, 1, 2], rope_theta=1e4),
        vision=dict(depth=2, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32,
                    window_size=56, fullatt_block_indexes=[1]),
        tie=True),
    "small": dict(
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, mrope_section=[8, 12, 12], rope_theta=1e6),
        vision=dict(depth=8, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=896,
                    window_size=112, fullatt_block_indexes=[3, 7]),
        tie=True),
    "7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, mrope_section=[16, 24, 24], rope_theta=1e6),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        tie=False),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def hf_config(shape: str, tok: Tokenizer) -> Qwen2_5_VLConfig:
    """The shape with the tokenizer's special ids and a vocabulary grown to cover it (as
    `shapes::fit_tokenizer` does)."""
    s = SHAPES[shape]
    t = dict(s["text"])
    ids = {k: tok.token_to_id(v) for k, v in
           dict(image=IMAGE_PAD, start="<|vision_start|>", end="<|vision_end|>").items()}
    t["vocab_size"] = max(t["vocab_size"], tok.get_vocab_size(with_added_tokens=True), max(ids.values()) + 1)
    mrope, theta = t.pop("mrope_section"), t.pop("rope_theta")
    return Qwen2_5_VLConfig(
        text_config=dict(**t, rms_norm_eps=1e-6, tie_word_embeddings=s["tie"],
                         rope_parameters=dict(rope_type="default", mrope_section=mrope, rope_theta=theta)),
        vision_config=s["vision"],
        tie_word_embeddings=s["tie"],
        image_token_id=ids["image"], video_token_id=151656, vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"],
    )


def render(binary: str, policy: str, fmt: str, rule: str | None = None) -> str:
    cmd = [binary, "policy", "render", policy, "--format", fmt] + (["--rule", rule] if rule else [])
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout


def prohibited_rules(binary: str, policy: str) -> list[str]:
    out = subprocess.run([binary, "policy", "show", policy, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"cannot list the rules of {policy}: {out.stderr}")
    value = json.loads(out.stdout)
    return [r["id"] for r in value.get("rules", []) if r.get("stance") == "prohibited"]


class Reference:
    """The transformers side of one workload."""

    def __init__(self, args, prompts: dict[str, list[str]]):
        self.args = args
        self.tok = Tokenizer.from_file(args.tokenizer)
        self.pad_id = self.tok.token_to_id("<|endoftext|>")
        self.image_pad_id = self.tok.token_to_id(IMAGE_PAD)
        self.proc = Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": args.max_pixels})
        self.prompts = prompts
        torch.manual_seed(0)
        self.model = Qwen2_5_VLForConditionalGeneration(hf_config(args.shape, self.tok)).to(DTYPES[args.dtype]).eval()
        self.model.set_attn_implementation(args.attn)
        self.merge = 4

    def inputs(self, blobs: list[bytes], text: str) -> dict:
        images = [ImageOps.exif_transpose(Image.open(io.BytesIO(b))).convert("RGB") for b in blobs]
        pix = self.proc(images=images, return_tensors="pt")
        rows = []
        for grid in pix["image_grid_thw"]:
            n = int(grid.prod()) // self.merge
            rows.append(self.tok.encode(text.replace(IMAGE_PAD, IMAGE_PAD * n), add_special_tokens=False).ids)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding, as for generation
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return dict(input_ids=ids, attention_mask=mask, pixel_values=pix["pixel_values"].to(DTYPES[self.args.dtype]),
                    image_grid_thw=pix["image_grid_thw"], mm_token_type_ids=(ids == self.image_pad_id).long())

    def call(self, mode: str, blobs: list[bytes]) -> tuple[int, int]:
        """Judges one batch; returns (prompt tokens, generated tokens)."""
        if mode == "score":
            prompt = 0
            for text in self.prompts["score"]:
                inputs = self.inputs(blobs, text)
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1].float()
                torch.softmax(logits, dim=-1)
                prompt += int(inputs["attention_mask"].sum())
            return prompt, 0
        inputs = self.inputs(blobs, self.prompts["reason"][0])
        n = self.args.max_new_tokens
        out = self.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  eos_token_id=None, pad_token_id=self.pad_id)
        return int(inputs["attention_mask"].sum()), (out.shape[1] - inputs["input_ids"].shape[1]) * len(blobs)

    @torch.no_grad()
    def run(self, mode: str, batch: int, blobs: list[bytes]) -> dict:
        a = self.args
        for _ in range(a.warmup):
            self.call(mode, blobs[:1])
        calls, prompt, generated, images = [], 0, 0, 0
        start = time.perf_counter()
        for _ in range(a.repeat):
            order = [blobs[i % len(blobs)] for i in range(a.requests)]
            for i in range(0, len(order), batch):
                chunk = order[i:i + batch]
                t = time.perf_counter()
                p, g = self.call(mode, chunk)
                calls.append(((time.perf_counter() - t) * 1e3, len(chunk)))
                prompt, generated, images = prompt + p, generated + g, images + len(chunk)
        seconds = time.perf_counter() - start
        per_image = [ms / n for ms, n in calls]
        return dict(mode=mode, batch=batch, cache=False, images=images, seconds=seconds,
                    images_per_s=images / seconds,
                    ms_per_image_p50=float(np.percentile(per_image, 50, method="nearest")),
                    ms_per_image_p95=float(np.percentile(per_image, 95, method="nearest")),
                    prompt_tokens_per_image=prompt / images, prefill_tokens_per_s=prompt / seconds,
                    generated_tokens=generated, generated_tokens_per_s=generated / seconds)


def ours(args, mode: str, batches: str, out: Path) -> dict:
    cmd = [args.binary, "bench", "--shape", args.shape, "--tokenizer", args.tokenizer, "--mode", mode,
           "--batch-sizes", batches, "--requests", str(args.requests), "--repeat", str(args.repeat),
           "--warmup", str(args.warmup), "--max-new-tokens", str(args.max_new_tokens), "--policy", args.policy,
           "--images", args.images, "--max-pixels", str(args.max_pixels), "--dtype", args.dtype,
           "--json", str(out)] + (["--no-rules"] if args.no_rules else [])
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="small", choices=sorted(SHAPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--score-batches", default="1,4")
    p.add_argument("--reason-batches", default="1", help="empty to skip reason mode")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--policy", default="L3")
    p.add_argument("--no-rules", action="store_true")
    p.add_argument("--images", default=str(ROOT / "examples/images"))
    p.add_argument("--max-pixels", type=int, default=448 * 448)
    p.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--tokenizer", default=str(ROOT / "target/assets/qwen-tokenizer/tokenizer.json"))
    p.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")),
                                                    "release", "safeguard"))
    p.add_argument("--skip-reference", action="store_true", help="run only ours")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rules = [] if args.no_rules else prohibited_rules(args.binary, args.policy)
    prompts = dict(score=[render(args.binary, args.policy, "verdict")]
                   + [render(args.binary, args.policy, "verdict", r) for r in rules],
                   reason=[render(args.binary, args.policy, "reasoning")])
    paths = sorted(q for q in Path(args.images).rglob("*") if q.suffix.lower() in EXTENSIONS)
    blobs = [q.read_bytes() for q in paths]
    plan = [("score", int(b)) for b in args.score_batches.split(",") if b] + \
           [("reason", int(b)) for b in args.reason_batches.split(",") if b]

    reference = []
    if not args.skip_reference:
        ref = Reference(args, prompts)
        for mode, batch in plan:
            r = ref.run(mode, batch, blobs)
            print(f"  transformers {mode} batch {batch}: {r['images_per_s']:.3f} images/s", file=sys.stderr, flush=True)
            reference.append(r)
        del ref

    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if args.score_batches:
            runs.append(ours(args, "score", args.score_batches, Path(tmp, "score.json")))
        if args.reason_batches:
            runs.append(ours(args, "reason", args.reason_batches, Path(tmp, "reason.json")))
    results = [r for run in runs for r in run["results"]]

    print(f"\nshape {args.shape}, {args.dtype}, {args.threads} threads, policy {args.policy}, "
          f"rules {'off' if args.no_rules else 'on'}, {args.requests} requests; transformers has no prefix cache")
    print("| mode | batch | transformers images/s | ours, cache off | ratio | ours, cache on | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    table = []
    for mode, batch in plan:
        ref = next((r for r in reference if r["mode"] == mode and r["batch"] == batch), None)
        off = next((r for r in results if r["mode"] == mode and r["batch"] == batch and not r["cache"]), None)
        on = next((r for r in results if r["mode"] == mode and r["batch"] == batch and r["cache"]), None)
        row = dict(mode=mode, batch=batch, transformers=ref and ref["images_per_s"],
                   ours_cache_off=off and off["images_per_s"], ours_cache_on=on and on["images_per_s"])
        row["ratio_cache_off"] = ref and off and off["images_per_s"] / ref["images_per_s"]
        row["ratio_cache_on"] = ref and on and on["images_per_s"] / ref["images_per_s"]
        table.append(row)
        fmt = lambda x, s="": "-" if x is None else f"{x:.3f}{s}"
        print(f"| {mode} | {batch} | {fmt(row['transformers'])} | {fmt(row['ours_cache_off'])} | "
              f"{fmt(row['ratio_cache_off'], 'x')} | {fmt(row['ours_cache_on'])} | {fmt(row['ratio_cache_on'], 'x')} |")
    if args.json:
        args.json.write_text(json.dumps(dict(
            machine=dict(cpu=cpu_model(), cores=os.cpu_count(), threads=args.threads),
            date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
            transformers=__import__("transformers").__version__, settings=vars(args) | dict(json=str(args.json)),
            transformers_prefix_cache=False, reference=reference, ours=runs, table=table), indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
