//! Untrusted bytes through the whole input path: `decode_image` then `preprocess`.
//!
//! Any panic, abort, out-of-memory or timeout is a bug: every failure must come back as a
//! `VisionError`. Limits are smaller than the defaults so that each input runs in milliseconds
//! (libFuzzer's `-rss_limit_mb` still catches an allocation that ignores them).

#![no_main]

use libfuzzer_sys::fuzz_target;
use safeguard_vision::{decode_image, preprocess, DecodeLimits, PreprocessConfig};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_encoded_bytes: 1 << 20,
        max_width: 4096,
        max_height: 4096,
        max_pixels: 1 << 20,
        max_alloc_bytes: 64 << 20,
    };
    let Ok(image) = decode_image(data, &limits) else {
        return;
    };
    let cfg = PreprocessConfig {
        max_pixels: 28 * 28 * 64,
        ..PreprocessConfig::default()
    };
    if let Ok(out) = preprocess(&image, &cfg) {
        assert_eq!(out.pixel_values.len(), out.num_patches() * cfg.patch_dim());
        assert!(out.pixel_values.iter().all(|v| v.is_finite()));
        // Sides are whole merge blocks. (The area may exceed max_pixels for elongated images,
        // exactly as the reference's smart_resize does, so that is not asserted.)
        let [t, h, w] = out.grid_thw;
        assert!(t == 1 && h >= 2 && w >= 2 && h % 2 == 0 && w % 2 == 0);
    }
});
