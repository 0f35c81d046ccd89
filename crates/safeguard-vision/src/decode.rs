//! Bounded decoding of untrusted image bytes into an 8-bit RGB image.

use std::io::Cursor;

use image::error::{
    DecodingError, ImageError, ImageFormatHint, LimitErrorKind, UnsupportedError,
    UnsupportedErrorKind,
};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage, RgbaImage};

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

/// Most scans a JPEG may have. Every scan of a progressive JPEG is a pass of the decoder over
/// all of the image's blocks, and libjpeg accepts any number of them (repeating a scan is only a
/// warning): 12 bytes per repeated scan of a flat 1024x1024 image cost PIL's libjpeg-turbo about
/// 0.7 ms each, so a 1 MB file would take a minute of CPU. Encoders write about 10 (libjpeg's
/// default progression) to a few dozen; `djpeg -maxscans` and `jpegtran -maxscans` exist
/// for the same reason.
pub const MAX_JPEG_SCANS: usize = 256;

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
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(VisionError::Malformed {
            format: format_name,
            source: ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Exact(ImageFormat::Jpeg),
                "truncated: no end-of-image marker after the scan data",
            )),
        });
    }
    if format == ImageFormat::Jpeg {
        let scans = jpeg_scan_count(bytes, MAX_JPEG_SCANS + 1);
        if scans > MAX_JPEG_SCANS {
            return Err(VisionError::Unsupported(ImageError::Unsupported(
                UnsupportedError::from_format_and_kind(
                    ImageFormatHint::Exact(ImageFormat::Jpeg),
                    UnsupportedErrorKind::GenericFeature(format!(
                        "more than {MAX_JPEG_SCANS} scans (each scan is a pass over the whole \
                         image)"
                    )),
                ),
            )));
        }
    }

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
    let decoded_by_libjpeg = if format == ImageFormat::Jpeg {
        decode_jpeg_like_pil(bytes, (width, height), limits)?
    } else {
        None
    };
    let mut image = match decoded_by_libjpeg {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder)
            .map_err(|e| map_image_error(e, &format_name, limits))?,
    };
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

/// Decodes a YCbCr, RGB or grayscale JPEG to RGB with libjpeg-turbo's decoder (through
/// `mozjpeg`, whose decoder is libjpeg-turbo's), with the settings PIL uses: the accurate integer
/// IDCT and "fancy" (triangular) chroma upsampling. zune-jpeg, the `image` crate's decoder,
/// upsamples subsampled chroma with a different rounding (up to 4 levels apart from PIL).
///
/// Returns `Ok(None)` for the colour spaces PIL converts itself (CMYK and YCCK), which are left
/// to the `image` crate as before. `header` is the size the `image` crate read from the header
/// and already checked against the limits; libjpeg must agree with it, and its working memory
/// (the output plus, for a progressive or multi-scan file, the whole coefficient buffer) is
/// checked against `max_alloc_bytes` before decompression starts.
///
/// libjpeg reports errors by calling an error handler that never returns; `mozjpeg`'s unwinds
/// (`resume_unwind`, so no panic message is printed) through the C code, which is built with
/// `-fexceptions` for that. The unwind is caught here and becomes a [`VisionError`]; the
/// decompressor is dropped (`jpeg_destroy_decompress`) on the way out.
fn decode_jpeg_like_pil(
    bytes: &[u8],
    header: (u32, u32),
    limits: &DecodeLimits,
) -> Result<Option<RgbImage>, VisionError> {
    use mozjpeg::{ColorSpace, DctMethod, Decompress};

    let malformed = |message: String| VisionError::Malformed {
        format: "Jpeg".to_owned(),
        source: ImageError::Decoding(DecodingError::new(
            ImageFormatHint::Exact(ImageFormat::Jpeg),
            message,
        )),
    };
    let multi_scan = jpeg_needs_coefficient_buffer(bytes);
    let run = || -> Result<Option<RgbImage>, VisionError> {
        let mut decompress = Decompress::new_mem(bytes).map_err(|e| malformed(e.to_string()))?;
        match decompress.color_space() {
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB | ColorSpace::JCS_GRAYSCALE => {}
            _ => return Ok(None),
        }
        let (width, height) = decompress.size();
        if (width as u64, height as u64) != (u64::from(header.0), u64::from(header.1)) {
            return Err(malformed(format!(
                "libjpeg reads a {width}x{height} frame, the header parser {}x{}",
                header.0, header.1
            )));
        }
        let output = width as u64 * height as u64 * 3;
        let coefficients: u64 = if multi_scan {
            decompress
                .components()
                .iter()
                .map(|c| {
                    let rows = u64::from(c.height_in_blocks) + u64::from(c.v_samp_factor as u32);
                    u64::from(c.width_in_blocks) * rows * 64 * 2
                })
                .sum()
        } else {
            0
        };
        let needed = output + coefficients;
        if needed > limits.max_alloc_bytes {
            return Err(VisionError::MemoryLimit {
                needed,
                limit: limits.max_alloc_bytes,
            });
        }
        decompress.dct_method(DctMethod::IntegerSlow);
        decompress.do_fancy_upsampling(true);
        let mut started = decompress.rgb().map_err(|e| malformed(e.to_string()))?;
        let pixels: Vec<u8> = started
            .read_scanlines()
            .map_err(|e| malformed(e.to_string()))?;
        started.finish().map_err(|e| malformed(e.to_string()))?;
        let got = pixels.len();
        RgbImage::from_raw(header.0, header.1, pixels)
            .map(Some)
            .ok_or_else(|| malformed(format!("{got} bytes decoded, {output} expected")))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "libjpeg error".to_owned());
            Err(malformed(message))
        }
    }
}

/// Whether libjpeg will buffer the whole image's DCT coefficients: for a progressive frame, or
/// when the first scan does not hold every component (`has_multiple_scans` in `jdinput.c`).
/// Unknown layouts count as yes, which only makes the memory check stricter.
fn jpeg_needs_coefficient_buffer(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    let mut frame: Option<(bool, u8)> = None; // (progressive, components)
    loop {
        let Some((at, marker)) = next_marker(bytes, i) else {
            return true;
        };
        match marker {
            0xDA => {
                return match (frame, bytes.get(at + 4)) {
                    (Some((progressive, components)), Some(&in_scan)) => {
                        progressive || in_scan < components
                    }
                    _ => true,
                };
            }
            0x01 | 0xD0..=0xD7 => i = at + 2,
            _ => {
                if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
                    let progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
                    match bytes.get(at + 9) {
                        Some(&components) => frame = Some((progressive, components)),
                        None => return true,
                    }
                }
                match segment_end(bytes, at) {
                    Some(end) => i = end,
                    None => return true,
                }
            }
        }
    }
}

/// Whether a JPEG stream has an end-of-image marker after its first scan.
///
/// The JPEG decoder fills a truncated scan with grey instead of failing; PIL (the reference)
/// refuses such files ("image file is truncated"), and so do we. Walks the marker segments up to
/// the first start-of-scan, then looks for `FF D9` in the entropy-coded data (where byte
/// stuffing keeps `FF` from being followed by anything but `00` or a marker), so that an EXIF
/// thumbnail's own end marker does not count.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        let Some((at, marker)) = next_marker(bytes, i) else {
            return false;
        };
        match marker {
            0xDA => return bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
            0x01 | 0xD0..=0xD7 => i = at + 2,
            _ => match segment_end(bytes, at) {
                Some(end) => i = end,
                None => return false,
            },
        }
    }
}

/// Start-of-scan markers in a JPEG stream, counting up to `stop` (then it stops looking).
/// Marker segments are skipped by their length and entropy-coded data up to the next marker, as
/// libjpeg reads them; counting ends at the end-of-image marker or the end of the bytes.
fn jpeg_scan_count(bytes: &[u8], stop: usize) -> usize {
    let mut i = 2; // after SOI
    let mut scans = 0;
    while scans < stop {
        let Some((at, marker)) = next_marker(bytes, i) else {
            break;
        };
        match marker {
            0xD9 => break,
            0x01 | 0xD0..=0xD7 => i = at + 2,
            _ => {
                if marker == 0xDA {
                    scans += 1;
                }
                match segment_end(bytes, at) {
                    Some(end) => i = end,
                    None => break,
                }
            }
        }
    }
    scans
}

/// The next marker at or after `from`, as libjpeg's `next_marker` (`jdmarker.c`) finds it: bytes
/// before an `FF` are skipped (libjpeg warns "extraneous bytes before marker" and goes on, and
/// so does PIL), `FF` fill bytes are skipped, and `FF 00` is not a marker. Returns the offset of
/// the `FF` right before the marker code, and the code.
fn next_marker(bytes: &[u8], mut from: usize) -> Option<(usize, u8)> {
    loop {
        let ff = from + bytes.get(from..)?.iter().position(|&b| b == 0xFF)?;
        let mut code_at = ff + 1;
        while bytes.get(code_at) == Some(&0xFF) {
            code_at += 1;
        }
        match *bytes.get(code_at)? {
            0 => from = code_at + 1,
            code => return Some((code_at - 1, code)),
        }
    }
}

/// The offset just past the segment whose marker's `FF` is at `at` (marker, then a big-endian
/// length that counts itself), or `None` when the length is cut off.
fn segment_end(bytes: &[u8], at: usize) -> Option<usize> {
    let length = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]);
    Some(at + 2 + usize::from(length))
}

/// Converts any decoded image to 8-bit RGB, compositing transparency onto opaque white.
fn flatten_on_white(image: DynamicImage) -> RgbImage {
    let image = high_byte_of_16_bit(image);
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

/// Reduces 16-bit samples to 8 bits by keeping the high byte, as PIL does when it opens a
/// 16-bit RGB(A) PNG (the `image` crate would round instead, which moves a third of the samples
/// by one level). 16-bit grayscale gets the same treatment; PIL would clip it to 255 instead,
/// which we do not copy (see docs/vision.md).
fn high_byte_of_16_bit(image: DynamicImage) -> DynamicImage {
    fn shift<P, Q>(src: &image::ImageBuffer<P, Vec<u16>>) -> image::ImageBuffer<Q, Vec<u8>>
    where
        P: image::Pixel<Subpixel = u16>,
        Q: image::Pixel<Subpixel = u8>,
    {
        let data = src.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
        image::ImageBuffer::from_raw(src.width(), src.height(), data)
            .expect("same dimensions and channel count")
    }
    match image {
        DynamicImage::ImageRgb16(b) => DynamicImage::ImageRgb8(shift(&b)),
        DynamicImage::ImageRgba16(b) => DynamicImage::ImageRgba8(shift(&b)),
        DynamicImage::ImageLuma16(b) => DynamicImage::ImageLuma8(shift(&b)),
        DynamicImage::ImageLumaA16(b) => DynamicImage::ImageLumaA8(shift(&b)),
        other => other,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_matches_pil_alpha_composite() {
        // (channel, alpha, PIL's `alpha_composite(white, src)` result), computed with Pillow 13.
        let cases = [
            (0, 0, 255),
            (0, 1, 254),
            (0, 128, 127),
            (0, 254, 1),
            (0, 255, 0),
            (200, 77, 238),
            (13, 200, 65),
            (255, 3, 255),
            (128, 128, 191),
            (90, 250, 93),
        ];
        for (channel, alpha, want) in cases {
            assert_eq!(
                composite_on_white(channel, alpha),
                want,
                "{channel} @ {alpha}"
            );
        }
    }

    /// libjpeg-turbo's fatal errors (its `error_exit` unwinds out of the C code) come back as
    /// `Malformed` carrying libjpeg's message, whether raised while reading the header
    /// (`jpeg_read_header`), starting the decompressor or reading scanlines.
    #[test]
    fn libjpeg_fatal_errors_are_malformed() {
        let limits = DecodeLimits::default();
        // SOS before any SOF: refused by `jpeg_read_header`.
        let sos_first = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0xFF, 0xD9,
        ];
        let undefined_table: &[u8] =
            include_bytes!("../tests/fixtures/corrupt-jpeg/sos_undefined_huffman_table.jpg");
        let bad_sampling: &[u8] =
            include_bytes!("../tests/fixtures/corrupt-jpeg/sof_sampling_5x5.jpg");
        for (name, bytes) in [
            ("SOS before SOF", &sos_first[..]),
            ("undefined Huffman table", undefined_table),
            ("bad sampling factors", bad_sampling),
        ] {
            // Run twice: the decompressor must be left in no state that breaks the next call.
            for _ in 0..2 {
                match decode_jpeg_like_pil(bytes, (32, 24), &limits) {
                    Err(VisionError::Malformed { format, source }) => {
                        assert_eq!(format, "Jpeg");
                        let message = source.to_string();
                        assert!(message.contains("libjpeg fatal error"), "{name}: {message}");
                    }
                    other => panic!("{name}: expected Malformed, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn jpeg_completeness_ignores_a_thumbnail_end_marker() {
        // SOI, an APP1 segment whose payload holds FF D9 (like an EXIF thumbnail), then SOS.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34]);
        assert!(!jpeg_is_complete(&jpeg));
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert!(jpeg_is_complete(&jpeg));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF]));
    }

    #[test]
    fn jpeg_marker_walk_skips_garbage_like_libjpeg() {
        // SOI, garbage (with a stuffed FF 00), fill bytes, then SOS and EOI.
        let jpeg = [
            0xFF, 0xD8, 0x12, 0x34, 0xFF, 0x00, 0x56, 0xFF, 0xFF, 0xDA, 0x00, 0x03, 0x01, 0x00,
            0xFF, 0xD9,
        ];
        assert_eq!(next_marker(&jpeg, 2), Some((8, 0xDA)));
        assert!(jpeg_is_complete(&jpeg));
        assert!(!jpeg_is_complete(&jpeg[..14]));
        assert_eq!(next_marker(&[0xFF, 0xD8, 0x00, 0xFF], 2), None);
        assert_eq!(segment_end(&[0xFF, 0xC4, 0x00], 0), None);
        assert_eq!(jpeg_scan_count(&jpeg, 10), 1);
    }

    /// A progressive JPEG whose last scan is repeated: libjpeg-turbo (and PIL) would decode it,
    /// one pass over the image per scan; past `MAX_JPEG_SCANS` it is refused before decoding.
    #[test]
    fn jpeg_with_too_many_scans_is_refused() {
        let jpeg: &[u8] = include_bytes!("../tests/fixtures/corrupt-jpeg/valid_progressive.jpg");
        let scans = jpeg_scan_count(jpeg, usize::MAX);
        assert!((2..20).contains(&scans), "{scans} scans");
        let last = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let body = &jpeg[..jpeg.len() - 2];
        let with_scans = |total: usize| {
            let mut out = body.to_vec();
            for _ in scans..total {
                out.extend_from_slice(&body[last..]);
            }
            out.extend_from_slice(&[0xFF, 0xD9]);
            out
        };
        let limits = DecodeLimits::default();
        let at_limit = with_scans(MAX_JPEG_SCANS);
        assert_eq!(jpeg_scan_count(&at_limit, usize::MAX), MAX_JPEG_SCANS);
        assert_eq!(
            decode_image(&at_limit, &limits).unwrap().dimensions(),
            (32, 24)
        );
        match decode_image(&with_scans(MAX_JPEG_SCANS + 1), &limits) {
            Err(VisionError::Unsupported(err)) => {
                assert!(err.to_string().contains("scans"), "{err}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}
