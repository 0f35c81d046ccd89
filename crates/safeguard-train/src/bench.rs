//! `safeguard train bench`: speed and memory of LoRA SFT steps on a named shape with random
//! weights (synthetic tokens and pixels), the Rust half of `scripts/bench/train_bench.sh`
//! (whose Python half runs the same steps in PyTorch + PEFT).
//!
//! Each step is a real training step: vision tower once without a graph, the SFT loss over the
//! target tokens with per-layer recomputation (or the whole graph), the LoRA gradients, AdamW.

use std::time::Instant;

use candle_core::{Device, Tensor};
use safeguard_model::qwen2_5_vl::train::{TrainOptions, TrainRow};
use safeguard_model::qwen2_5_vl::{Prompt, Qwen2_5VlModel, VisionInputs, WeightLayout};
use serde::Serialize;

use crate::error::Result;
use crate::lora::{LoraSpec, TrainableLora};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tokens per sequence, image included.
    pub seq_len: usize,
    /// Image grid `(t, h, w)` in patches (`h·w/4` image tokens after the merge).
    pub grid: [usize; 3],
    /// Target tokens at the end of the sequence.
    pub target_tokens: usize,
    /// LoRA rank (alpha = 2·rank).
    pub rank: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Measured steps (after one warm-up step).
    pub steps: usize,
    /// Per-layer recomputation.
    pub recompute: bool,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// `"safeguard"`.
    pub implementation: &'static str,
    /// Seconds per step (median of the measured steps).
    pub step_seconds: f64,
    /// Tokens (all positions) per second.
    pub tokens_per_second: f64,
    /// Peak resident memory of the process (MiB), from `/proc/self/status` `VmHWM`.
    pub peak_rss_mib: f64,
    /// Resident memory after the model was built (MiB).
    pub loaded_rss_mib: f64,
    /// Trainable LoRA values.
    pub lora_parameters: usize,
    /// Loss of the last step.
    pub loss: f64,
    /// Settings.
    pub seq_len: usize,
    /// Sequences per step.
    pub batch: usize,
    /// LoRA rank.
    pub rank: usize,
    /// Per-layer recomputation.
    pub recompute: bool,
}

/// `VmHWM` / `VmRSS` of this process in MiB (0 where `/proc` is missing).
pub fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the benchmark on `model` (plain, non-`Var` weights) with token ids in
/// `0..vocab` avoiding the special ids, deterministic.
pub fn bench_lora_steps(model: &mut Qwen2_5VlModel, opts: &BenchOptions) -> Result<BenchResult> {
    let loaded_rss = rss_mib("VmRSS:");
    let cfg = model.config().clone();
    let device = model.lm_head_weight().device().clone();
    let spec = LoraSpec {
        r: opts.rank,
        alpha: 2.0 * opts.rank as f64,
        dropout: 0.0,
        use_rslora: false,
        target_modules: crate::lora::PROJECTIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        vision: false,
    };
    let lora = TrainableLora::init(model, &spec, WeightLayout::Nested, 0, &device)?;
    lora.attach(model)?;
    let vars = lora.vars();
    let mut opt = AdamW::new(AdamWConfig::default(), &vars, lora.names())?;
    let image_tokens = model.image_tokens(opts.grid);
    let text = opts
        .seq_len
        .saturating_sub(image_tokens + 2)
        .max(opts.target_tokens + 1);
    let mut ids = vec![cfg.vision_start_token_id];
    ids.extend(std::iter::repeat_n(cfg.image_token_id, image_tokens));
    ids.push(cfg.vision_end_token_id);
    ids.extend((0..text).map(|i| (i as u32 * 7919 + 13) % 1000 + 10));
    let len = ids.len();
    let targets: Vec<bool> = (0..len).map(|i| i >= len - opts.target_tokens).collect();
    let patches: usize = opts.grid.iter().product();
    let dim = cfg.vision_config.patch_dim();
    let pixels: Vec<f32> = (0..patches * dim)
        .map(|i| ((i * 37) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let pixel_values = Tensor::from_vec(pixels, (patches, dim), &Device::Cpu)?;
    let mut times = Vec::with_capacity(opts.steps);
    let mut loss = 0.0;
    let grids = [opts.grid];
    for step in 0..=opts.steps {
        let began = Instant::now();
        let mut embeds = Vec::with_capacity(opts.batch);
        for _ in 0..opts.batch {
            embeds.push(
                model
                    .embed_images(&VisionInputs {
                        pixel_values: pixel_values.clone(),
                        grid_thw: grids.to_vec(),
                    })?
                    .detach(),
            );
        }
        let rows: Vec<TrainRow<'_>> = embeds
            .iter()
            .map(|e| TrainRow {
                prompt: Prompt {
                    input_ids: &ids,
                    grids: &grids,
                    image_embeds: Some(e),
                },
                targets: &targets,
            })
            .collect();
        let n = opts.batch * opts.target_tokens;
        let out = model.train_step(
            &rows,
            &vars,
            &TrainOptions {
                recompute: opts.recompute,
                head_chunk: 512,
                grad_scale: 1.0 / n as f64,
            },
        )?;
        let mut grads: Vec<Tensor> = out.grads.into_iter().flatten().collect();
        clip_grad_norm(&mut grads, 1.0)?;
        opt.update(&vars, &grads, 1e-4)?;
        loss = out.loss_sum / out.tokens as f64;
        if step > 0 {
            times.push(began.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let step_seconds = times[times.len() / 2];
    Ok(BenchResult {
        implementation: "safeguard",
        step_seconds,
        tokens_per_second: (len * opts.batch) as f64 / step_seconds,
        peak_rss_mib: rss_mib("VmHWM:"),
        loaded_rss_mib: loaded_rss,
        lora_parameters: lora.parameter_count(),
        loss,
        seq_len: len,
        batch: opts.batch,
        rank: opts.rank,
        recompute: opts.recompute,
    })
}
