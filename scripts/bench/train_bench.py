#!/usr/bin/env python3
"""LoRA SFT step speed and memory in PyTorch + PEFT: the Python half of train_bench.sh.

The twin of `safeguard train bench` (crates/safeguard-train/src/bench.rs): the same random-weight
Qwen2.5-VL shape (the config.json that `safeguard train bench --write-config FILE` writes), LoRA
rank R, alpha 2R, dropout 0 on q/k/v/o/gate/up/down of the language model only, and the same
steps: per step the vision tower on the same synthetic pixels (grid (1, G, G), no graph), the SFT
loss (transformers' own: labels = -100 except the last T tokens, mean cross entropy) with
gradient checkpointing unless --no-recompute, backward, clip_grad_norm_(1.0),
AdamW(lr 1e-4, weight decay 0). One warm-up step, then --steps measured; the median is reported.
Prints one JSON line with the keys of the Rust side ("implementation": "pytorch+peft").

The model is `Qwen2_5_VLForConditionalGeneration(config)` (float32, eager attention unless
--attn sdpa), every weight frozen, then `get_peft_model(LoraConfig(..., exclude_modules=".*visual.*"))`.
With recomputation: `gradient_checkpointing_enable(gradient_checkpointing_kwargs=
{"use_reentrant": False})` and `enable_input_require_grads()`, as TRL and PEFT set it up.

Two details keep it the same work as the Rust side:
- transformers 5 `enable_input_require_grads()` hooks the input embedding of every
  PreTrainedModel inside the model, the vision tower's `patch_embed` included, so the frozen
  tower would record a graph (and be recomputed and back-propagated through). That hook is
  removed; a forward hook on the tower checks that its output needs no gradient.
  --vision-graph keeps it (what a TRL run on transformers 5 pays).
- --init candle (default) draws the weights like candle's initialisers in the Rust random model
  (embedding N(0, 1), linear weights N(0, 2/fan_in), biases U(+-1/sqrt(fan_in)), norms 1, the
  patch embedding 0), so that the losses are of the same size (random weights: not equal);
  --init hf keeps transformers' (N(0, 0.02)), whose loss is about ln(vocab).

Run from the repository root (torch, transformers 5.x, peft):
    python3 scripts/bench/train_bench.py --config /tmp/cfg.json --seq-len 512 --steps 3
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def vm_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def candle_init(model):
    """candle's default initialisers, as the Rust random model draws its weights."""
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        for module in model.modules():
            name = type(module).__name__
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
            elif isinstance(module, torch.nn.Linear):
                fan_in = module.in_features
                if module.weight is not embed:  # a tied head is the embedding
                    module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    bound = 1.0 / fan_in ** 0.5
                    module.bias.uniform_(-bound, bound)
            elif isinstance(module, (torch.nn.Conv3d, torch.nn.Conv2d)):
                module.weight.zero_()  # VarBuilder::get without hints: zeros
                if module.bias is not None:
                    module.bias.zero_()
            elif name.endswith("RMSNorm") or isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="config.json from safeguard train bench --write-config")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--target-tokens", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-recompute", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--attn", choices=["eager", "sdpa"], default="eager")
    p.add_argument("--init", choices=["candle", "hf"], default="candle")
    p.add_argument("--vision-graph", action="store_true",
                   help="keep enable_input_require_grads' hook on the vision tower")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    steps = max(args.steps, 1)
    recompute = not args.no_recompute

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft.__version__}, threads {torch.get_num_threads()}, "
          f"attn {args.attn}, init {args.init}", file=sys.stderr)

    with open(args.config) as f:
        raw = json.load(f)
    config = Qwen2_5_VLConfig(**raw)
    vocab = config.text_config.vocab_size
    if config.image_token_id >= vocab:  # the tiny shape: as the Rust side, ids inside the vocabulary
        config.vision_start_token_id = vocab - 4
        config.image_token_id = vocab - 3
        config.vision_end_token_id = vocab - 2
        config.video_token_id = vocab - 1
    config.use_cache = False

    model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, attn_implementation=args.attn, dtype=torch.float32)
    if args.init == "candle":
        candle_init(model)
    for param in model.parameters():
        param.requires_grad_(False)
    loaded_rss = vm_rss_mib()
    visual = model.model.visual
    assert visual.config._attn_implementation == args.attn, visual.config._attn_implementation
    assert model.model.language_model.config._attn_implementation == args.attn

    if recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    lora_cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                          target_modules=TARGETS, exclude_modules=".*visual.*", bias="none")
    model = get_peft_model(model, lora_cfg)
    if recompute and not args.vision_graph:
        # enable_input_require_grads() ran three times: inside gradient_checkpointing_enable()
        # (transformers 5 does it for models whose main input is input_ids), here, and inside
        # get_peft_model() (PEFT does it for a model with checkpointing on); each hooked the
        # tower's patch embedding as well. Remove every such hook there.
        patch_embed = visual.get_input_embeddings()
        removed = 0
        for key, fn in list(patch_embed._forward_hooks.items()):
            if getattr(fn, "__name__", "") == "make_inputs_require_grads":
                del patch_embed._forward_hooks[key]
                patch_embed._forward_hooks_with_kwargs.pop(key, None)
                patch_embed._forward_hooks_always_called.pop(key, None)
                removed += 1
        print(f"removed {removed} require-grad hooks from the vision tower's patch embedding",
              file=sys.stderr)
    model.train()
    trainable = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    assert trainable and all(".visual." not in n and "lora_" in n for n, _ in trainable), \
        [n for n, _ in trainable if ".visual." in n or "lora_" not in n]
    params = [q for _, q in trainable]
    lora_parameters = sum(q.numel() for q in params)

    vision_needs_grad = []
    visual.register_forward_hook(
        lambda m, i, out: vision_needs_grad.append(out.pooler_output.requires_grad))

    merge = config.vision_config.spatial_merge_size
    image_tokens = args.grid * args.grid // (merge * merge)
    text = max(args.seq_len - image_tokens - 2, args.target_tokens + 1)
    ids = ([config.vision_start_token_id] + [config.image_token_id] * image_tokens
           + [config.vision_end_token_id] + [(i * 7919 + 13) % 1000 + 10 for i in range(text)])
    length = len(ids)
    input_ids = torch.tensor([ids] * args.batch, dtype=torch.long)
    labels = input_ids.clone()
    labels[:, : length - args.target_tokens] = -100
    attention_mask = torch.ones_like(input_ids)
    patches = args.grid * args.grid
    dim = config.vision_config.in_channels * config.vision_config.temporal_patch_size \
        * config.vision_config.patch_size ** 2
    flat = torch.arange(patches * dim, dtype=torch.int64)
    pixels = (((flat * 37) % 255).to(torch.float32) / 127.0 - 1.0).reshape(patches, dim)
    pixel_values = pixels.repeat(args.batch, 1)
    grid_thw = torch.tensor([[1, args.grid, args.grid]] * args.batch, dtype=torch.long)

    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    times = []
    loss_value = float("nan")
    for step in range(steps + 1):
        began = time.perf_counter()
        out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                    image_grid_thw=grid_thw, labels=labels, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = out.loss.item()
        if step > 0:
            times.append(time.perf_counter() - began)
        del out

    if not args.vision_graph:
        assert vision_needs_grad and not any(vision_needs_grad), \
            f"the vision tower recorded a graph: {vision_needs_grad}"
    print(f"vision output needed grad: {sorted(set(vision_needs_grad))}; step times {times}",
          file=sys.stderr)
    step_seconds = sorted(times)[len(times) // 2]  # as the Rust side (upper median)
    print(json.dumps({
        "implementation": "pytorch+peft",
        "step_seconds": step_seconds,
        "tokens_per_second": length * args.batch / step_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "loaded_rss_mib": loaded_rss,
        "lora_parameters": lora_parameters,
        "loss": loss_value,
        "seq_len": length,
        "batch": args.batch,
        "rank": args.rank,
        "recompute": recompute,
    }))


if __name__ == "__main__":
    main()
