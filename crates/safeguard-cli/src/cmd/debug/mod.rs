//! `safeguard debug …`: low-level tools that dump intermediate arrays for parity checks against
//! the Python reference implementation.

mod forward;
mod preprocess;
mod random_model;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use safeguard_vision::{decode_image, preprocess, DecodeLimits, PreprocessConfig, Preprocessed};

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Decode and preprocess one image exactly as the model sees it; writes
    /// `pixel_values.npy` and `grid_thw.json`.
    Preprocess(preprocess::PreprocessArgs),
    /// Run one forward pass of a Qwen2.5-VL checkpoint; writes `logits.npy` and
    /// `image_embeds.npy`.
    Forward(forward::ForwardArgs),
    /// Write a checkpoint directory of a named shape (tiny, small, 7b) with random weights,
    /// loadable with --model (for serving benchmarks).
    RandomModel(random_model::RandomModelArgs),
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::Preprocess(args) => preprocess::run(args),
        DebugCommand::Forward(args) => forward::run(args),
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
