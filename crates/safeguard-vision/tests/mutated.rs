//! A property-test companion to the `cargo fuzz` target (`fuzz/`): random bytes and mutated
//! fixture images never panic the decode + preprocess path; each gives an error or a valid
//! output. Runs in CI without a nightly toolchain.

use proptest::prelude::*;
use safeguard_vision::{decode_and_preprocess, DecodeLimits, PreprocessConfig};

use crate::common::image_bytes;

const SEEDS: [&str; 9] = [
    "gradient.png",
    "alpha.png",
    "rgb16.png",
    "baseline_444.jpg",
    "progressive_420.jpg",
    "lossless.webp",
    "animated.gif",
    "image.bmp",
    "image.tiff",
];

fn check(bytes: &[u8]) {
    let limits = DecodeLimits {
        max_pixels: 1 << 20,
        max_alloc_bytes: 64 << 20,
        ..DecodeLimits::default()
    };
    let cfg = PreprocessConfig {
        max_pixels: 28 * 28 * 16,
        ..PreprocessConfig::default()
    };
    if let Ok(out) = decode_and_preprocess(bytes, &limits, &cfg) {
        assert_eq!(out.pixel_values.len(), out.num_patches() * 1176);
        assert!(out.pixel_values.iter().all(|v| v.is_finite()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
    }

    #[test]
    fn mutated_images_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = image_bytes(SEEDS[seed]);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        check(&bytes);
    }
}
