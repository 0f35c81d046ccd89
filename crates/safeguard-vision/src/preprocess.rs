//! Qwen2-VL preprocessing: smart resize, rescale + normalize, temporal duplication, patchify.

use image::RgbImage;

use crate::{resize_bicubic, PreprocessConfig, VisionError};

/// The model-ready form of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// Row-major `[num_patches, 3 * temporal_patch_size * patch_size²]` (1176 values per row
    /// with the defaults), in the reference's order: see [`patchify`].
    pub pixel_values: Vec<f32>,
    /// `[t, h, w]` in patches: `t = 1` for a still image, `h = height / patch_size`,
    /// `w = width / patch_size` of the resized image.
    pub grid_thw: [usize; 3],
}

impl Preprocessed {
    /// Rows of `pixel_values`: `t * h * w`.
    pub fn num_patches(&self) -> usize {
        self.grid_thw.iter().product()
    }

    /// `<|image_pad|>` tokens this image takes in the prompt: patches / `merge_size²`.
    pub fn num_image_tokens(&self, merge_size: usize) -> usize {
        self.num_patches() / (merge_size * merge_size).max(1)
    }
}

/// Preprocesses one decoded image exactly as `Qwen2VLImageProcessorPil` does.
///
/// Steps: [`smart_resize`](crate::smart_resize) the size to multiples of `patch_size * merge_size` within the pixel
/// bounds, resize with PIL-compatible bicubic ([`resize_bicubic`], 8-bit result), rescale by
/// 1/255, normalize with `image_mean`/`image_std`, repeat to `temporal_patch_size` frames and
/// [`patchify`].
///
/// Errors: [`VisionError::InvalidConfig`] for an unusable `cfg`, and
/// [`VisionError::AspectRatioTooLarge`] for images the reference refuses (ratio above 200).
pub fn preprocess(image: &RgbImage, cfg: &PreprocessConfig) -> Result<Preprocessed, VisionError> {
    cfg.validate()?;
    let (width, height) = image.dimensions();
    let (_, (new_h, new_w)) = crate::image_tokens(width, height, cfg)?;
    let too_big = |side: usize| {
        u32::try_from(side).map_err(|_| {
            VisionError::InvalidConfig(format!("resized side of {side} pixels is too large"))
        })
    };
    let resized = resize_bicubic(image, too_big(new_w)?, too_big(new_h)?)?;
    Ok(patchify(&resized, cfg))
}

/// Normalizes and patchifies an image whose sides are multiples of `patch_size * merge_size`.
///
/// Row order: merge blocks in raster order, and inside each block its `merge_size²` patches in
/// raster order. Values in a row: channel, then frame (the image repeated), then patch row, then
/// patch column, i.e. `[c][t][py][px]`. This is the reference's
/// `reshape(C, gh/m, m, P, gw/m, m, P).transpose(1, 4, 2, 5, 0, 3, 6)` with the temporal axis
/// inserted after the channel.
///
/// # Panics
///
/// If the image's sides are not multiples of `patch_size * merge_size` (a programming error:
/// use the size from [`smart_resize`](crate::smart_resize)).
pub fn patchify(image: &RgbImage, cfg: &PreprocessConfig) -> Preprocessed {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    assert!(
        width % (p * m) == 0 && height % (p * m) == 0,
        "patchify needs sides that are multiples of {}, got {width}x{height}",
        p * m
    );
    let lut = normalization_table(cfg);
    let (grid_h, grid_w) = (height / p, width / p);
    let frame = p * p;
    // Written strictly in order, so the buffer is never zero-filled first.
    let mut out: Vec<f32> = Vec::with_capacity(grid_h * grid_w * 3 * t * frame);
    let src = image.as_raw();
    for block_y in 0..grid_h / m {
        for block_x in 0..grid_w / m {
            for my in 0..m {
                for mx in 0..m {
                    let (y0, x0) = ((block_y * m + my) * p, (block_x * m + mx) * p);
                    for (c, table) in lut.iter().enumerate() {
                        let first = out.len();
                        for py in 0..p {
                            let start = ((y0 + py) * width + x0) * 3;
                            let pixels = &src[start..start + 3 * p];
                            out.extend(pixels.chunks_exact(3).map(|px| table[usize::from(px[c])]));
                        }
                        for _ in 1..t {
                            out.extend_from_within(first..first + frame);
                        }
                    }
                }
            }
        }
    }
    Preprocessed {
        pixel_values: out,
        grid_thw: [1, grid_h, grid_w],
    }
}

/// `table[c][v] = (v / 255 - mean[c]) / std[c]`, computed as the reference does (NumPy: the
/// `uint8` image cast to float, multiplied by `1/255`, then `(x - mean) / std` in float32).
fn normalization_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mut table = [[0f32; 256]; 3];
    for (c, chan) in table.iter_mut().enumerate() {
        for (v, slot) in chan.iter_mut().enumerate() {
            let scaled = (v as f64 * (1.0 / 255.0)) as f32;
            *slot = (scaled - cfg.image_mean[c]) / cfg.image_std[c];
        }
    }
    table
}
