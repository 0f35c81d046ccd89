//! [`PreprocessConfig`]: the knobs of Qwen2-VL's image processor and how they are read from
//! `preprocessor_config.json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::VisionError;

/// CLIP's per-channel mean (RGB), used by every Qwen2-VL / Qwen2.5-VL checkpoint.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (RGB).
// The reference's literals, digit for digit (they round to the nearest f32 either way).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Largest `max_pixels` that [`PreprocessConfig::validate`] accepts: 2^26 pixels (an 8192×8192
/// image, 342 448 patches, 1.6 GB of `pixel_values`). The checkpoints ship 12 845 056.
pub const MAX_TARGET_PIXELS: usize = 1 << 26;

/// Parameters of the Qwen2-VL image processor (`Qwen2VLImageProcessor`).
///
/// `Default` is the processor's own default, which is also the bound recommended on the
/// Qwen2.5-VL model card: `min_pixels = 56*56 = 3136`, `max_pixels = 28*28*1280 = 1003520`
/// (at most 1280 LLM tokens per image), patch 14, temporal patch 2, merge 2, CLIP mean/std.
/// Note that the `preprocessor_config.json` shipped with the Qwen2.5-VL checkpoints raises
/// `max_pixels` to 12845056; [`PreprocessConfig::from_model_dir`] picks that up.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Smallest image area after resizing, in pixels.
    pub min_pixels: usize,
    /// Largest image area after resizing, in pixels.
    pub max_pixels: usize,
    /// Side of a vision patch, in pixels (14).
    pub patch_size: usize,
    /// Frames per temporal patch (2): a still image is repeated this many times.
    pub temporal_patch_size: usize,
    /// Patches merged per side into one LLM token (2, so 2×2 patches per token).
    pub merge_size: usize,
    /// Per-channel mean subtracted after rescaling to `[0, 1]` (RGB order).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean (RGB order).
    pub image_std: [f32; 3],
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

/// The keys of `preprocessor_config.json` that matter here; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
    size: Option<RawSize>,
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    merge_size: Option<usize>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    do_resize: Option<bool>,
    do_rescale: Option<bool>,
    do_normalize: Option<bool>,
    rescale_factor: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSize {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
}

/// Where a model directory's image-processor settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `preprocessor_config.json` (transformers 4.x, and what the released checkpoints ship).
    PreprocessorConfig(PathBuf),
    /// The `image_processor` section of `processor_config.json` (transformers 5 writes only
    /// this file when it saves a processor).
    ProcessorConfig(PathBuf),
    /// Neither file exists: the processor's own defaults.
    Defaults,
}

/// Name of the 4.x image-processor file.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";
/// Name of the v5 processor file (image-processor settings under `image_processor`).
pub const PROCESSOR_CONFIG: &str = "processor_config.json";

impl PreprocessConfig {
    /// Reads the image-processor settings of a model directory: `preprocessor_config.json`,
    /// else the `image_processor` section of `processor_config.json` (transformers v5), else
    /// the defaults (see [`PreprocessConfig::from_model_dir_with_source`] to know which).
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, VisionError> {
        Ok(Self::from_model_dir_with_source(dir)?.0)
    }

    /// [`PreprocessConfig::from_model_dir`] and where the settings came from, so that a caller
    /// can warn when the defaults were used (their `max_pixels` is lower than the released
    /// checkpoints' and changes the answers).
    pub fn from_model_dir_with_source(
        dir: impl AsRef<Path>,
    ) -> Result<(Self, ConfigSource), VisionError> {
        let dir = dir.as_ref();
        let path = dir.join(PREPROCESSOR_CONFIG);
        if path.exists() {
            return Ok((
                Self::from_json_file(&path)?,
                ConfigSource::PreprocessorConfig(path),
            ));
        }
        let path = dir.join(PROCESSOR_CONFIG);
        if path.exists() {
            let text = read(&path)?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| VisionError::ConfigParse {
                    path: path.clone(),
                    source,
                })?;
            let Some(section) = value.get("image_processor") else {
                return Err(VisionError::InvalidConfig(format!(
                    "{} has no `image_processor` section (transformers v5 writes the image \
                     processor's settings there)",
                    path.display()
                )));
            };
            let raw: RawConfig = serde_json::from_value(section.clone()).map_err(|source| {
                VisionError::ConfigParse {
                    path: path.clone(),
                    source,
                }
            })?;
            return Ok((Self::from_raw(raw)?, ConfigSource::ProcessorConfig(path)));
        }
        Ok((Self::default(), ConfigSource::Defaults))
    }

    /// Reads a `preprocessor_config.json` file.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, VisionError> {
        let path = path.as_ref();
        let text = read(path)?;
        let raw: RawConfig =
            serde_json::from_str(&text).map_err(|source| VisionError::ConfigParse {
                path: path.to_owned(),
                source,
            })?;
        Self::from_raw(raw)
    }

    /// Parses the text of a `preprocessor_config.json`.
    ///
    /// Pixel bounds come from `min_pixels`/`max_pixels` when present, else from
    /// `size.shortest_edge`/`size.longest_edge` (the newer transformers keys), else the
    /// defaults: the same precedence as `Qwen2VLImageProcessor.__init__`.
    pub fn from_json_str(text: &str) -> Result<Self, VisionError> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|source| VisionError::ConfigParse {
                path: "preprocessor_config.json".into(),
                source,
            })?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, VisionError> {
        for (key, value) in [
            ("do_resize", raw.do_resize),
            ("do_rescale", raw.do_rescale),
            ("do_normalize", raw.do_normalize),
        ] {
            if value == Some(false) {
                return Err(VisionError::InvalidConfig(format!(
                    "`{key}: false` is not supported (Qwen2-VL always resizes, rescales and \
                     normalizes)"
                )));
            }
        }
        if let Some(factor) = raw.rescale_factor {
            if (factor - 1.0 / 255.0).abs() > 1e-9 {
                return Err(VisionError::InvalidConfig(format!(
                    "`rescale_factor: {factor}` is not supported (only 1/255)"
                )));
            }
        }
        let defaults = Self::default();
        let size = raw.size.unwrap_or_default();
        let cfg = Self {
            min_pixels: (raw.min_pixels.or(size.shortest_edge).or(size.min_pixels))
                .unwrap_or(defaults.min_pixels),
            max_pixels: (raw.max_pixels.or(size.longest_edge).or(size.max_pixels))
                .unwrap_or(defaults.max_pixels),
            patch_size: raw.patch_size.unwrap_or(defaults.patch_size),
            temporal_patch_size: raw
                .temporal_patch_size
                .unwrap_or(defaults.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(defaults.merge_size),
            image_mean: raw.image_mean.unwrap_or(defaults.image_mean),
            image_std: raw.image_std.unwrap_or(defaults.image_std),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Side of the resize grid, in pixels: `patch_size * merge_size` (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Values per row of `pixel_values`: `3 * temporal_patch_size * patch_size²` (1176).
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Checks that the configuration can be used: non-zero sizes,
    /// `0 < min_pixels <= max_pixels <= MAX_TARGET_PIXELS`,
    /// non-zero and finite standard deviations.
    pub fn validate(&self) -> Result<(), VisionError> {
        let bad = |msg: String| Err(VisionError::InvalidConfig(msg));
        if self.patch_size == 0 || self.temporal_patch_size == 0 || self.merge_size == 0 {
            return bad(format!(
                "patch_size ({}), temporal_patch_size ({}) and merge_size ({}) must be positive",
                self.patch_size, self.temporal_patch_size, self.merge_size
            ));
        }
        if self.patch_size > 1024 || self.merge_size > 64 || self.temporal_patch_size > 64 {
            return bad(
                "patch_size, merge_size or temporal_patch_size is implausibly large".into(),
            );
        }
        if self.min_pixels == 0 || self.min_pixels > self.max_pixels {
            return bad(format!(
                "need 0 < min_pixels <= max_pixels, got min_pixels {} and max_pixels {}",
                self.min_pixels, self.max_pixels
            ));
        }
        if self.max_pixels > MAX_TARGET_PIXELS {
            return bad(format!(
                "max_pixels {} is above the supported {MAX_TARGET_PIXELS}",
                self.max_pixels
            ));
        }
        if self
            .image_std
            .iter()
            .chain(&self.image_mean)
            .any(|v| !v.is_finite())
            || self.image_std.contains(&0.0)
        {
            return bad(format!(
                "image_mean {:?} and image_std {:?} must be finite, image_std non-zero",
                self.image_mean, self.image_std
            ));
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, VisionError> {
    std::fs::read_to_string(path).map_err(|source| VisionError::ConfigRead {
        path: path.to_owned(),
        source,
    })
}
