//! `safeguard debug …`: low-level tools that dump intermediate arrays for parity checks against
//! the Python reference implementation.

mod forward;
mod grad;
mod preprocess;
mod random_model;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use safeguard_engine::candle_core::Tensor;
use safeguard_engine::tokenizer::expand_id_list;
use safeguard_engine::LoadedModel;
use safeguard_model::qwen2_5_vl::VisionInputs;
use safeguard_vision::{decode_image, preprocess, DecodeLimits, PreprocessConfig, Preprocessed};

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Decode and preprocess one image exactly as the model sees it; writes
    /// `pixel_values.npy` and `grid_thw.json`.
    Preprocess(preprocess::PreprocessArgs),
    /// Run one forward pass of a Qwen2.5-VL checkpoint; writes `logits.npy` and
    /// `image_embeds.npy`.
    Forward(forward::ForwardArgs),
    /// One forward and backward pass of the SFT loss with a LoRA adapter; writes `loss.json`
    /// and `grads.safetensors` (the gradient of every adapter tensor, under its own key).
    Grad(grad::GradArgs),
    /// Write a checkpoint directory of a named shape (tiny, small, 7b) with random weights,
    /// loadable with --model (for serving benchmarks).
    RandomModel(random_model::RandomModelArgs),
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::Preprocess(args) => preprocess::run(args),
        DebugCommand::Forward(args) => forward::run(args),
        DebugCommand::Grad(args) => grad::run(args),
        DebugCommand::RandomModel(args) => random_model::run(args),
    }
}

/// Applies `--min-pixels` / `--max-pixels` to a preprocessor config and checks the bounds.
fn with_pixel_bounds(
    mut config: PreprocessConfig,
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
) -> anyhow::Result<PreprocessConfig> {
    if let Some(min) = min_pixels {
        config.min_pixels = min;
    }
    if let Some(max) = max_pixels {
        config.max_pixels = max;
    }
    config
        .validate()
        .context("check --min-pixels and --max-pixels")?;
    Ok(config)
}

/// Reads, decodes (default limits) and preprocesses one image file.
fn load_image(path: &Path, config: &PreprocessConfig) -> anyhow::Result<Preprocessed> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let image = decode_image(&bytes, &DecodeLimits::default())
        .with_context(|| format!("cannot decode {}", path.display()))?;
    preprocess(&image, config).with_context(|| format!("cannot preprocess {}", path.display()))
}

/// The model input of `debug forward` / `debug grad`: `images` preprocessed and embedded,
/// `<image>` in the comma list `input_ids` expanded. Returns the expanded ids, the grids, the
/// image embeddings and the image-pad count of each image.
#[allow(clippy::type_complexity)]
fn prepare_input(
    loaded: &LoadedModel,
    images: &[PathBuf],
    preprocess: &PreprocessConfig,
    input_ids: &str,
) -> anyhow::Result<(Vec<u32>, Vec<[usize; 3]>, Option<Tensor>, Vec<usize>)> {
    let vision = &loaded.config.vision_config;
    if preprocess.patch_dim() != vision.patch_dim() {
        anyhow::bail!(
            "preprocessor_config.json gives {} values per patch but the model expects {}",
            preprocess.patch_dim(),
            vision.patch_dim()
        );
    }
    let images = images
        .iter()
        .map(|p| load_image(p, preprocess))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
    let tokens: Vec<usize> = images
        .iter()
        .map(|i| i.num_image_tokens(vision.spatial_merge_size))
        .collect();
    let cfg = &loaded.config;
    let special = (
        cfg.vision_start_token_id,
        cfg.image_token_id,
        cfg.vision_end_token_id,
    );
    let ids = expand_id_list(input_ids, &tokens, special)?;
    let embeds = if images.is_empty() {
        None
    } else {
        let pixels: Vec<f32> = images
            .iter()
            .flat_map(|i| i.pixel_values.iter().copied())
            .collect();
        let rows = pixels.len() / vision.patch_dim();
        let device = loaded.model.lm_head_weight().device();
        let pixel_values = Tensor::from_vec(pixels, (rows, vision.patch_dim()), device)?;
        Some(loaded.model.embed_images(&VisionInputs {
            pixel_values,
            grid_thw: grids.clone(),
        })?)
    };
    Ok((ids, grids, embeds, tokens))
}
