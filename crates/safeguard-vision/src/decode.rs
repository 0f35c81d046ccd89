//! Bounded decoding of untrusted image bytes into an 8-bit RGB image.

use std::io::Cursor;

use image::error::{ImageError, LimitErrorKind};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage, RgbaImage};

use crate::VisionError;

/// Limits applied to untrusted input before and while decoding.
///
/// Dimensions are read from the header and checked before any pixel buffer is allocated, so a
/// small file that declares a huge image (a decompression bomb) is refused cheaply.
///
/// The defaults accept any ordinary photo or screenshot (up to 64 megapixels, e.g. 8192×8192,
/// and very long panoramas up to 32768 pixels on a side) while bounding the decoder's buffer to
/// 512 MiB:
///
/// | field | default |
/// | --- | --- |
/// | `max_encoded_bytes` | 64 MiB |
/// | `max_width`, `max_height` | 32768 pixels |
/// | `max_pixels` | 67 108 864 (64 Mi pixels) |
/// | `max_alloc_bytes` | 512 MiB |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted input, in bytes (encoded).
    pub max_encoded_bytes: usize,
    /// Largest accepted width, in pixels (as declared by the header, before orientation).
    pub max_width: u32,
    /// Largest accepted height, in pixels (as declared by the header, before orientation).
    pub max_height: u32,
    /// Largest accepted `width * height`, in pixels.
    pub max_pixels: u64,
    /// Largest buffer the decoder may allocate, in bytes (passed to `image::Limits::max_alloc`;
    /// also checked against the decoded size, `width * height * bytes per pixel`).
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_encoded_bytes: 64 << 20,
            max_width: 32_768,
            max_height: 32_768,
            max_pixels: 64 << 20,
            max_alloc_bytes: 512 << 20,
        }
    }
}

/// Decodes untrusted image bytes (JPEG, PNG, WebP, GIF first frame, BMP, TIFF) into 8-bit RGB.
///
/// The format is sniffed from the bytes, not taken from a file name. The EXIF orientation is
/// applied, 16-bit samples are reduced to 8 bits and transparency is composited onto white
/// exactly as PIL's `Image.alpha_composite` does (which is what the reference processor uses).
/// Every failure is a [`VisionError`]; this function does not panic on any input.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, VisionError> {
    if bytes.is_empty() {
        return Err(VisionError::EmptyInput);
    }
    if bytes.len() > limits.max_encoded_bytes {
        return Err(VisionError::EncodedTooLarge {
            size: bytes.len(),
            limit: limits.max_encoded_bytes,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| VisionError::Unsupported(ImageError::IoError(e)))?;
    let format = reader.format().ok_or(VisionError::UnknownFormat)?;
    let format_name = format!("{format:?}");

    // Header first, with only the allocation limit: dimensions are checked by us below, so that
    // the error can name them.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(header_limits.clone());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, &format_name, limits))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, decoder.total_bytes(), limits)?;

    let mut full_limits = header_limits;
    full_limits.max_image_width = Some(limits.max_width);
    full_limits.max_image_height = Some(limits.max_height);
    decoder
        .set_limits(full_limits)
        .map_err(|e| map_image_error(e, &format_name, limits))?;
    // A broken EXIF block must not make a good image undecodable: fall back to no rotation.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| map_image_error(e, &format_name, limits))?;
    image.apply_orientation(orientation);
    Ok(flatten_on_white(image))
}

/// Checks declared dimensions against the limits, before anything is allocated.
fn check_dimensions(
    width: u32,
    height: u32,
    total_bytes: u64,
    limits: &DecodeLimits,
) -> Result<(), VisionError> {
    if width == 0 || height == 0 {
        return Err(VisionError::ZeroSize { width, height });
    }
    if width > limits.max_width || height > limits.max_height {
        return Err(VisionError::DimensionsTooLarge {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(VisionError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if total_bytes > limits.max_alloc_bytes {
        return Err(VisionError::MemoryLimit {
            needed: total_bytes,
            limit: limits.max_alloc_bytes,
        });
    }
    Ok(())
}

fn map_image_error(err: ImageError, format: &str, limits: &DecodeLimits) -> VisionError {
    match err {
        ImageError::Limits(ref limit) => match limit.kind() {
            LimitErrorKind::InsufficientMemory => VisionError::MemoryLimit {
                needed: 0,
                limit: limits.max_alloc_bytes,
            },
            _ => VisionError::Unsupported(err),
        },
        ImageError::Unsupported(_) => VisionError::Unsupported(err),
        other => VisionError::Malformed {
            format: format.to_owned(),
            source: other,
        },
    }
}

/// Converts any decoded image to 8-bit RGB, compositing transparency onto opaque white.
fn flatten_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return match image {
            DynamicImage::ImageRgb8(rgb) => rgb,
            other => other.to_rgb8(),
        };
    }
    let rgba: RgbaImage = match image {
        DynamicImage::ImageRgba8(rgba) => rgba,
        other => other.to_rgba8(),
    };
    let (width, height) = rgba.dimensions();
    let mut out = Vec::with_capacity(rgba.as_raw().len() / 4 * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let alpha = u32::from(px[3]);
        for &c in &px[..3] {
            out.push(composite_on_white(u32::from(c), alpha));
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer length is width * height * 3")
}

/// One channel of PIL's `alpha_composite(white, src)` (`libImaging/AlphaComposite.c`), in the
/// same fixed-point arithmetic so that results are bit-identical.
#[inline]
pub(crate) fn composite_on_white(channel: u32, alpha: u32) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if alpha == 0 {
        return 255;
    }
    // Destination is opaque white: blend = 255 * (255 - a), outa255 = 255 * 255.
    let outa255 = alpha * 255 + 255 * (255 - alpha);
    let coef1 = alpha * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = channel * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PRECISION_BITS) as u8
}
