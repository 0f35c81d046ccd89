//! `safeguard debug preprocess`: decode and preprocess one image exactly as the model sees it,
//! and dump the result for comparison with the Python reference processor.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use safeguard_vision::{decode_image, preprocess, DecodeLimits, PreprocessConfig};

#[derive(Debug, clap::Args)]
pub struct PreprocessArgs {
    /// The image file (JPEG, PNG, WebP, GIF, BMP or TIFF; the format is read from the bytes).
    image: PathBuf,
    /// Smallest image area after resizing, in pixels [default: 3136, or the model's].
    #[arg(long, env = "SAFEGUARD_MIN_PIXELS")]
    min_pixels: Option<usize>,
    /// Largest image area after resizing, in pixels [default: 1003520, or the model's].
    #[arg(long, env = "SAFEGUARD_MAX_PIXELS")]
    max_pixels: Option<usize>,
    /// A model directory whose `preprocessor_config.json` supplies the defaults.
    #[arg(long, env = "SAFEGUARD_MODEL")]
    model: Option<PathBuf>,
    /// Output directory; receives `pixel_values.npy` (f32, [patches, 1176]) and
    /// `grid_thw.json` (`[t, h, w]`). Created if missing.
    #[arg(long)]
    out: PathBuf,
}

/// Validated options: the configuration is resolved before any work starts.
struct PreprocessOptions {
    image: PathBuf,
    config: PreprocessConfig,
    out: PathBuf,
}

impl PreprocessArgs {
    fn validate(self) -> anyhow::Result<PreprocessOptions> {
        let config = match &self.model {
            Some(dir) => PreprocessConfig::from_model_dir(dir)
                .with_context(|| format!("reading the preprocessor config of {}", dir.display()))?,
            None => PreprocessConfig::default(),
        };
        let config = super::with_pixel_bounds(config, self.min_pixels, self.max_pixels)?;
        Ok(PreprocessOptions {
            image: self.image,
            config,
            out: self.out,
        })
    }
}

pub fn run(args: PreprocessArgs) -> anyhow::Result<ExitCode> {
    let opts = args.validate()?;
    let bytes = std::fs::read(&opts.image)
        .with_context(|| format!("cannot read {}", opts.image.display()))?;
    let image = decode_image(&bytes, &DecodeLimits::default())
        .with_context(|| format!("cannot decode {}", opts.image.display()))?;
    let out = preprocess(&image, &opts.config)
        .with_context(|| format!("cannot preprocess {}", opts.image.display()))?;

    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let npy_path = opts.out.join("pixel_values.npy");
    let file = std::fs::File::create(&npy_path)
        .with_context(|| format!("cannot create {}", npy_path.display()))?;
    let shape = [out.num_patches(), opts.config.patch_dim()];
    safeguard_vision::npy::write_f32(file, &shape, &out.pixel_values)
        .with_context(|| format!("cannot write {}", npy_path.display()))?;
    let grid_path = opts.out.join("grid_thw.json");
    std::fs::write(&grid_path, serde_json::to_string(&out.grid_thw)? + "\n")
        .with_context(|| format!("cannot write {}", grid_path.display()))?;
    eprintln!(
        "{}: {}x{} -> grid_thw {:?}, {} patches, {} image tokens",
        opts.image.display(),
        image.width(),
        image.height(),
        out.grid_thw,
        out.num_patches(),
        out.num_image_tokens(opts.config.merge_size)
    );
    Ok(ExitCode::SUCCESS)
}
