//! Image input for SafeGuard: bounded decoding of untrusted bytes and the Qwen2-VL image
//! preprocessing, matching Hugging Face's `Qwen2VLImageProcessorPil`.
//!
//! The pipeline is two calls:
//!
//! 1. [`decode_image`] turns bytes (JPEG, PNG, WebP, GIF, BMP, TIFF) into an 8-bit
//!    [`image::RgbImage`] under [`DecodeLimits`]: sizes are checked from the header before any
//!    pixel buffer exists, EXIF orientation is applied and transparency is composited on white.
//! 2. [`preprocess`] turns that image into [`Preprocessed`] (`pixel_values`, `grid_thw`) under a
//!    [`PreprocessConfig`] (pixel bounds, patch sizes, mean/std; read from a model directory's
//!    `preprocessor_config.json` by [`PreprocessConfig::from_model_dir`]).
//!
//! The steps of `preprocess` are public free functions so that they can be tested on their own:
//! [`smart_resize`] (integer size arithmetic), [`resize_bicubic`] (PIL-compatible bicubic) and
//! [`patchify`] (rescale, normalize, temporal repeat, patch layout). [`npy`] writes arrays in
//! NumPy's `.npy` format for parity dumps. Every failure is a [`VisionError`].
//!
//! ```
//! use safeguard_vision::{preprocess, PreprocessConfig};
//!
//! let image = image::RgbImage::from_pixel(640, 480, image::Rgb([200, 30, 30]));
//! let out = preprocess(&image, &PreprocessConfig::default()).unwrap();
//! assert_eq!(out.grid_thw, [1, 34, 46]); // 476x644 pixels after smart_resize
//! assert_eq!(out.pixel_values.len(), out.num_patches() * 1176);
//! assert_eq!(out.num_image_tokens(2), 391);
//! ```

#![warn(missing_docs)]

mod config;
mod decode;
mod error;
pub mod npy;
mod preprocess;
mod resize;

pub use config::{
    ConfigSource, PreprocessConfig, CLIP_MEAN, CLIP_STD, MAX_TARGET_PIXELS, PREPROCESSOR_CONFIG,
    PROCESSOR_CONFIG,
};
pub use decode::{decode_image, DecodeLimits, MAX_JPEG_SCANS};
pub use error::VisionError;
pub use preprocess::{patchify, preprocess, Preprocessed};
pub use resize::{resize_bicubic, smart_resize, MAX_ASPECT_RATIO};

/// Decodes `bytes` under `limits` and preprocesses the result under `cfg`: the whole path from
/// an upload to model input.
pub fn decode_and_preprocess(
    bytes: &[u8],
    limits: &DecodeLimits,
    cfg: &PreprocessConfig,
) -> Result<Preprocessed, VisionError> {
    decode_and_preprocess_within(bytes, limits, cfg, None)
}

/// LLM tokens an image of `width` × `height` pixels takes under `cfg`: its [`smart_resize`]d
/// area over `(patch_size · merge_size)²`, with the resized `(height, width)`.
pub fn image_tokens(
    width: u32,
    height: u32,
    cfg: &PreprocessConfig,
) -> Result<(usize, (usize, usize)), VisionError> {
    let (h, w) = smart_resize(
        height as usize,
        width as usize,
        cfg.factor(),
        cfg.min_pixels,
        cfg.max_pixels,
    )?;
    Ok((h * w / (cfg.factor() * cfg.factor()), (h, w)))
}

/// [`decode_and_preprocess`] that refuses, before resizing, an image that would take more than
/// `max_tokens` LLM tokens ([`VisionError::TooManyImageTokens`]); `None` = no budget beyond
/// `cfg.max_pixels`.
pub fn decode_and_preprocess_within(
    bytes: &[u8],
    limits: &DecodeLimits,
    cfg: &PreprocessConfig,
    max_tokens: Option<usize>,
) -> Result<Preprocessed, VisionError> {
    let image = decode_image(bytes, limits)?;
    if let Some(limit) = max_tokens {
        let (width, height) = image.dimensions();
        let (tokens, (resized_height, resized_width)) = image_tokens(width, height, cfg)?;
        if tokens > limit {
            return Err(VisionError::TooManyImageTokens {
                width,
                height,
                resized_width,
                resized_height,
                tokens,
                limit,
            });
        }
    }
    preprocess(&image, cfg)
}
