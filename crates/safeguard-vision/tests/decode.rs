//! The decoder's documented results on hostile and unusual input.

use safeguard_vision::{decode_image, preprocess, DecodeLimits, PreprocessConfig, VisionError};

use crate::common::image_bytes;

fn decode(bytes: &[u8]) -> Result<image::RgbImage, VisionError> {
    decode_image(bytes, &DecodeLimits::default())
}

#[test]
fn empty_input_is_refused() {
    assert!(matches!(decode(&[]), Err(VisionError::EmptyInput)));
}

#[test]
fn random_bytes_are_an_unknown_format() {
    // A fixed xorshift stream: reproducible "random" bytes.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert!(matches!(decode(&bytes), Err(VisionError::UnknownFormat)));
}

#[test]
fn truncated_jpeg_is_malformed() {
    let jpeg = image_bytes("baseline_444.jpg");
    for cut in [jpeg.len() / 2, 200, 20, 3] {
        match decode(&jpeg[..cut]) {
            Err(VisionError::Malformed { format, .. }) => assert_eq!(format, "Jpeg"),
            other => panic!("{cut} bytes: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn truncated_png_is_malformed() {
    let png = image_bytes("alpha.png");
    assert!(matches!(
        decode(&png[..png.len() / 2]),
        Err(VisionError::Malformed { .. })
    ));
}

#[test]
fn decompression_bomb_is_refused_by_its_header() {
    let bomb = image_bytes("bomb_50000x50000.png");
    assert!(bomb.len() < 10_000, "the bomb is a small file");
    match decode(&bomb) {
        Err(VisionError::DimensionsTooLarge { width, height, .. }) => {
            assert_eq!((width, height), (50_000, 50_000));
        }
        other => panic!("expected DimensionsTooLarge, got {other:?}"),
    }
    match decode(&image_bytes("bomb_20000x20000.png")) {
        Err(VisionError::TooManyPixels { pixels, limit, .. }) => {
            assert_eq!(pixels, 400_000_000);
            assert_eq!(limit, DecodeLimits::default().max_pixels);
        }
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
}

#[test]
fn memory_limit_is_enforced_before_decoding() {
    let limits = DecodeLimits {
        max_alloc_bytes: 10_000,
        ..DecodeLimits::default()
    };
    // alpha.png is 160x120 RGBA: 76800 bytes decoded.
    match decode_image(&image_bytes("alpha.png"), &limits) {
        Err(VisionError::MemoryLimit { needed, limit }) => {
            assert_eq!((needed, limit), (76_800, 10_000));
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
}

#[test]
fn caller_limits_apply() {
    let bytes = image_bytes("gradient.png"); // 300x200
    let tight = |f: fn(&mut DecodeLimits)| {
        let mut limits = DecodeLimits::default();
        f(&mut limits);
        decode_image(&bytes, &limits)
    };
    assert!(matches!(
        tight(|l| l.max_encoded_bytes = 100),
        Err(VisionError::EncodedTooLarge { limit: 100, .. })
    ));
    assert!(matches!(
        tight(|l| l.max_width = 299),
        Err(VisionError::DimensionsTooLarge { width: 300, .. })
    ));
    assert!(matches!(
        tight(|l| l.max_height = 199),
        Err(VisionError::DimensionsTooLarge { height: 200, .. })
    ));
    assert!(matches!(
        tight(|l| l.max_pixels = 59_999),
        Err(VisionError::TooManyPixels { pixels: 60_000, .. })
    ));
    assert_eq!(tight(|_| ()).unwrap().dimensions(), (300, 200));
}

#[test]
fn one_pixel_image_gives_a_56x56_input() {
    let image = decode(&image_bytes("one_pixel.png")).unwrap();
    assert_eq!(image.dimensions(), (1, 1));
    assert_eq!(image.get_pixel(0, 0).0, [200, 40, 90]);
    let out = preprocess(&image, &PreprocessConfig::default()).unwrap();
    assert_eq!(out.grid_thw, [1, 4, 4]);
    assert_eq!(out.pixel_values.len(), 16 * 1176);
}

#[test]
fn extreme_aspect_ratio_decodes_then_is_refused_like_the_reference() {
    let image = decode(&image_bytes("wide_30000x1.png")).unwrap();
    assert_eq!(image.dimensions(), (30_000, 1));
    match preprocess(&image, &PreprocessConfig::default()) {
        Err(VisionError::AspectRatioTooLarge { height, width }) => {
            assert_eq!((height, width), (1, 30_000));
        }
        other => panic!("expected AspectRatioTooLarge, got {other:?}"),
    }
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 150x90 with orientation 6 (rotate 90 degrees clockwise to display).
    let image = decode(&image_bytes("exif_rotated.jpg")).unwrap();
    assert_eq!(image.dimensions(), (90, 150));
}

#[test]
fn transparency_is_composited_on_white() {
    // The top-left 20x20 block of alpha.png is fully transparent.
    let image = decode(&image_bytes("alpha.png")).unwrap();
    assert_eq!(image.get_pixel(5, 5).0, [255, 255, 255]);
    // Where alpha is 0 on the left edge (the alpha ramp starts at 0), it is white too.
    assert_eq!(image.get_pixel(0, 60).0, [255, 255, 255]);
}

#[test]
fn every_supported_format_decodes() {
    for (name, size) in [
        ("gradient.png", (300, 200)),
        ("gray.png", (123, 77)),
        ("rgb16.png", (50, 40)),
        ("palette_trns.png", (97, 61)),
        ("baseline_444.jpg", (180, 128)),
        ("progressive_420.jpg", (180, 128)),
        ("cmyk.jpg", (180, 128)),
        ("lossless.webp", (180, 128)),
        ("animated.gif", (90, 70)),
        ("image.bmp", (77, 55)),
        ("image.tiff", (64, 48)),
    ] {
        let image = decode(&image_bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(image.dimensions(), size, "{name}");
    }
}

#[test]
fn cmyk_jpeg_has_the_colours_of_its_rgb_original() {
    let cmyk = decode(&image_bytes("cmyk.jpg")).unwrap();
    let rgb = decode(&image_bytes("baseline_444.jpg")).unwrap();
    let diff: f64 = cmyk
        .as_raw()
        .iter()
        .zip(rgb.as_raw())
        .map(|(&a, &b)| f64::from(a.abs_diff(b)))
        .sum::<f64>()
        / rgb.as_raw().len() as f64;
    assert!(
        diff < 4.0,
        "mean difference {diff} levels: CMYK was not converted"
    );
}
