//! Untrusted bytes through the whole input path as it runs today: `decode_image` (JPEG through
//! libjpeg-turbo via `mozjpeg`, CMYK JPEG and the other formats through `image`) then
//! `preprocess`, and `decode_and_preprocess_within` with small pixel bounds and a token budget.
//!
//! Any panic, abort, out-of-memory or timeout is a bug: every failure must come back as a
//! `VisionError`. Limits are smaller than the defaults so that each input runs in milliseconds
//! (libFuzzer's `-rss_limit_mb` still catches an allocation that ignores them).

#![no_main]

use libfuzzer_sys::fuzz_target;
use safeguard_vision::{
    decode_and_preprocess_within, decode_image, preprocess, DecodeLimits, PreprocessConfig,
    Preprocessed,
};

const LIMITS: DecodeLimits = DecodeLimits {
    max_encoded_bytes: 1 << 20,
    max_width: 4096,
    max_height: 4096,
    max_pixels: 1 << 20,
    max_alloc_bytes: 64 << 20,
};

/// Checks an output's invariants: right length, finite values, sides in whole merge blocks.
/// (The area may exceed `max_pixels` for elongated images, exactly as the reference's
/// smart_resize does, so that is not asserted.)
fn check(out: &Preprocessed, cfg: &PreprocessConfig) {
    assert_eq!(out.pixel_values.len(), out.num_patches() * cfg.patch_dim());
    assert!(out.pixel_values.iter().all(|v| v.is_finite()));
    let [t, h, w] = out.grid_thw;
    assert!(t == 1 && h >= 2 && w >= 2 && h % 2 == 0 && w % 2 == 0);
}

fuzz_target!(|data: &[u8]| {
    let Ok(image) = decode_image(data, &LIMITS) else {
        return;
    };
    // Orientation may swap the sides, so compare the longer side with the larger bound.
    let (width, height) = image.dimensions();
    assert!(width >= 1 && height >= 1);
    assert!(width.max(height) <= LIMITS.max_width.max(LIMITS.max_height));
    assert!(u64::from(width) * u64::from(height) <= LIMITS.max_pixels);

    let cfg = PreprocessConfig {
        max_pixels: 28 * 28 * 64,
        ..PreprocessConfig::default()
    };
    if let Ok(out) = preprocess(&image, &cfg) {
        check(&out, &cfg);
    }

    // The one-call path the server and CLI use, with tiny bounds so that resize always runs
    // (mostly downscaling) and a token budget that refuses some inputs before resizing.
    let small = PreprocessConfig {
        min_pixels: 28 * 28 * 4,
        max_pixels: 28 * 28 * 16,
        ..PreprocessConfig::default()
    };
    if let Ok(out) = decode_and_preprocess_within(data, &LIMITS, &small, Some(16)) {
        check(&out, &small);
        assert!(out.num_image_tokens(small.merge_size) <= 16);
    }
});
