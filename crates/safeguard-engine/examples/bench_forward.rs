//! Times one Qwen2.5-VL forward pass (vision tower, prefill, greedy decode) on inputs saved as
//! `.npy`, for the side-by-side comparison with PyTorch driven by
//! `scripts/fixtures/qwen25vl_bench.py`. Prints one JSON line and writes `logits.npy`.
//!
//! Usage: `bench_forward MODEL_DIR INPUT_DIR OUT_DIR REPS`, with `INPUT_DIR` holding
//! `pixel_values.npy` (f32 [patches, 1176]), `grid_thw.npy` (i64 [1, 3]) and `input_ids.npy`
//! (i64 [L]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use safeguard_engine::candle_core::{DType, Tensor};
use safeguard_engine::sampling::{generate, SamplingParams};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, VisionInputs};

fn read_i64(path: PathBuf) -> anyhow::Result<Vec<i64>> {
    let t = Tensor::read_npy(&path).with_context(|| path.display().to_string())?;
    Ok(t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 5,
        "usage: bench_forward MODEL_DIR INPUT_DIR OUT_DIR REPS"
    );
    let (model_dir, input, out) = (
        PathBuf::from(&args[1]),
        PathBuf::from(&args[2]),
        PathBuf::from(&args[3]),
    );
    let reps: usize = args[4].parse()?;
    let t0 = Instant::now();
    let model = load_model(&model_dir, &LoadOptions::default())?.model;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let pixels = Tensor::read_npy(input.join("pixel_values.npy"))?;
    let g = read_i64(input.join("grid_thw.npy"))?;
    let grids = vec![[g[0] as usize, g[1] as usize, g[2] as usize]];
    let ids: Vec<u32> = read_i64(input.join("input_ids.npy"))?
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let (mut vision, mut prefill) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let embeds = model.embed_images(&VisionInputs {
            pixel_values: pixels.clone(),
            grid_thw: grids.clone(),
        })?;
        vision.push(t.elapsed().as_secs_f64() * 1e3);
        let prompt = Prompt {
            input_ids: &ids,
            grids: &grids,
            image_embeds: Some(&embeds),
        };
        let t = Instant::now();
        let logits = model.forward(&prompt, &mut KvCache::new(), Logits::Last)?;
        prefill.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some((embeds, logits));
    }
    let (embeds, logits) = last.context("REPS must be at least 1")?;
    std::fs::create_dir_all(&out)?;
    logits.write_npy(out.join("logits.npy"))?;
    let prompt = Prompt {
        input_ids: &ids,
        grids: &grids,
        image_embeds: Some(&embeds),
    };
    let params = SamplingParams {
        max_new_tokens: 16,
        ..Default::default()
    };
    let t = Instant::now();
    let generated = generate(&model, &prompt, &params)?;
    let gen_ms = t.elapsed().as_secs_f64() * 1e3;
    let tokens: Vec<String> = generated.tokens.iter().map(u32::to_string).collect();
    println!(
        "{{\"load_ms\": {load_ms:.1}, \"vision_ms\": {:.1}, \"prefill_ms\": {:.1}, \"generate16_ms\": {gen_ms:.1}, \"tokens\": [{}]}}",
        median(vision),
        median(prefill),
        tokens.join(", ")
    );
    Ok(())
}
