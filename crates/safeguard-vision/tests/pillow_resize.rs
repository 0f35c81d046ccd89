//! `resize_bicubic` against Pillow: the same bytes as `Image.resize(size, Image.BICUBIC)` on
//! every committed case (`scripts/fixtures/pillow_resize.py`: noise, edges, gradients, a photo;
//! up- and downscales, one pass or two in either order, extreme ratios, one-pixel sides), and
//! no panic on random sizes.

use image::{Rgb, RgbImage};
use proptest::prelude::*;
use serde_json::Value;

use safeguard_vision::resize_bicubic;

use crate::common::fixtures;

fn load_png(name: &str) -> RgbImage {
    let path = fixtures().join("pillow-resize").join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
}

/// Differing values and the largest difference between two images of the same size.
fn compare(ours: &RgbImage, want: &RgbImage) -> (usize, u8) {
    ours.as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .filter(|&d| d > 0)
        .fold((0, 0), |(n, m), d| (n + 1, m.max(d)))
}

#[test]
fn every_case_equals_pillow_bit_for_bit() {
    let path = fixtures().join("pillow-resize/manifest.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pillow = manifest["versions"]["pillow"].as_str().unwrap();
    assert!(
        pillow.starts_with("13."),
        "fixtures made with Pillow {pillow}"
    );
    let cases = manifest["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 40,
        "expected the full case set, got {}",
        cases.len()
    );
    for pass in ["vertical", "horizontal"] {
        assert!(
            cases.iter().any(|c| c["first_pass"] == pass),
            "no case where Pillow runs the {pass} pass first"
        );
    }
    let mut failures = Vec::new();
    for case in cases {
        let input = load_png(case["input"].as_str().unwrap());
        let want = load_png(case["output"].as_str().unwrap());
        let size: Vec<u32> = case["size"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            input.dimensions().0,
            case["input_size"][0].as_u64().unwrap() as u32
        );
        assert_eq!(want.dimensions(), (size[0], size[1]), "{case}");
        let ours = resize_bicubic(&input, size[0], size[1]).unwrap();
        assert_eq!(ours.dimensions(), want.dimensions(), "{case}");
        let (count, max) = compare(&ours, &want);
        if count > 0 {
            failures.push(format!(
                "{} -> {}x{} ({} first): {count} of {} values differ, by up to {max}",
                case["input"],
                size[0],
                size[1],
                case["first_pass"],
                want.as_raw().len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "differences from Pillow:\n{}",
        failures.join("\n")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sizes (including one-pixel sides and ratios far beyond the preprocessing's) give an
    /// image of the requested size without panicking, and a flat image stays flat.
    #[test]
    fn random_sizes_never_panic(
        src_w in 1u32..80, src_h in 1u32..80, w in 1u32..160, h in 1u32..160, seed in any::<u32>(),
    ) {
        let noisy = RgbImage::from_fn(src_w, src_h, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed).to_le_bytes();
            Rgb([v[0], v[1], v[2]])
        });
        prop_assert_eq!(resize_bicubic(&noisy, w, h).unwrap().dimensions(), (w, h));
        let flat = RgbImage::from_pixel(src_w, src_h, Rgb([seed as u8, 0, 255]));
        let out = resize_bicubic(&flat, w, h).unwrap();
        prop_assert!(out.pixels().all(|p| *p == Rgb([seed as u8, 0, 255])));
    }
}
