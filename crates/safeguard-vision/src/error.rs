//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while decoding or preprocessing an image.
///
/// Each variant says what was wrong (the input bytes, the format, a dimension, a limit or the
/// configuration) so that callers can map it to a message or a status code without parsing text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VisionError {
    /// The input held zero bytes.
    #[error("the image is empty (0 bytes)")]
    EmptyInput,

    /// The encoded input is larger than [`DecodeLimits::max_encoded_bytes`](crate::DecodeLimits).
    #[error("the encoded image is {size} bytes, more than the limit of {limit} bytes")]
    EncodedTooLarge {
        /// Size of the input, in bytes.
        size: usize,
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },

    /// The bytes do not start like any image format we know (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[error("unrecognised image format (expected JPEG, PNG, WebP, GIF, BMP or TIFF)")]
    UnknownFormat,

    /// The format was recognised but this build cannot decode it (for example AVIF or a TIFF
    /// compression scheme that the decoder does not support).
    #[error("unsupported image format or feature: {0}")]
    Unsupported(#[source] image::ImageError),

    /// The image would take more LLM tokens than the caller's budget
    /// (see [`decode_and_preprocess_within`](crate::decode_and_preprocess_within)).
    #[error(
        "the {width}x{height} image resizes to {resized_width}x{resized_height} pixels = \
         {tokens} image tokens, above the limit of {limit} (--max-image-tokens); send a smaller \
         image or raise the limit"
    )]
    TooManyImageTokens {
        /// Decoded width, in pixels.
        width: u32,
        /// Decoded height, in pixels.
        height: u32,
        /// Width after `smart_resize`.
        resized_width: usize,
        /// Height after `smart_resize`.
        resized_height: usize,
        /// Tokens the image would take.
        tokens: usize,
        /// The budget.
        limit: usize,
    },

    /// The header declares a width or height of zero.
    #[error("the image declares an empty size of {width}x{height} pixels")]
    ZeroSize {
        /// Declared width, in pixels.
        width: u32,
        /// Declared height, in pixels.
        height: u32,
    },

    /// The header declares a width or height above the limit. Checked before any pixel buffer
    /// is allocated.
    #[error(
        "the image is {width}x{height} pixels; the limit is {max_width}x{max_height} \
         (width x height)"
    )]
    DimensionsTooLarge {
        /// Declared width, in pixels.
        width: u32,
        /// Declared height, in pixels.
        height: u32,
        /// Largest width allowed, in pixels.
        max_width: u32,
        /// Largest height allowed, in pixels.
        max_height: u32,
    },

    /// The header declares more pixels in all than the limit. Checked before any pixel buffer is
    /// allocated; this is what stops a decompression bomb.
    #[error("the image is {width}x{height} = {pixels} pixels, more than the limit of {limit}")]
    TooManyPixels {
        /// Declared width, in pixels.
        width: u32,
        /// Declared height, in pixels.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The limit that was exceeded, in pixels.
        limit: u64,
    },

    /// Decoding would need more memory than [`DecodeLimits::max_alloc_bytes`](crate::DecodeLimits).
    #[error("decoding needs {needed} bytes, more than the limit of {limit} bytes")]
    MemoryLimit {
        /// Bytes the decoded buffer would take (0 when the decoder did not say).
        needed: u64,
        /// The limit, in bytes.
        limit: u64,
    },

    /// The decoder refused the data: truncated, corrupt or otherwise malformed.
    #[error("the {format} data is malformed or truncated")]
    Malformed {
        /// The format the bytes were recognised as (for example `Jpeg`).
        format: String,
        /// What the decoder said.
        #[source]
        source: image::ImageError,
    },

    /// The image's aspect ratio is above 200, which the reference processor
    /// (`transformers`' `smart_resize`) refuses with a `ValueError`.
    #[error(
        "absolute aspect ratio must be smaller than 200, got {height}x{width} (height x width)"
    )]
    AspectRatioTooLarge {
        /// Height, in pixels.
        height: usize,
        /// Width, in pixels.
        width: usize,
    },

    /// The preprocessing configuration is not usable (for example `min_pixels > max_pixels`).
    #[error("invalid preprocessing configuration: {0}")]
    InvalidConfig(String),

    /// `preprocessor_config.json` could not be read.
    #[error("cannot read {}", path.display())]
    ConfigRead {
        /// The file at fault.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// `preprocessor_config.json` is not valid JSON or has a field of the wrong type.
    #[error("cannot parse {}", path.display())]
    ConfigParse {
        /// The file at fault.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}
