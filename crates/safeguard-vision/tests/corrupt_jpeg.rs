//! Corrupt JPEGs through `decode_image`: wherever PIL (the reference) refuses a file, we must
//! return a `VisionError`; never a panic, an abort, or an image.
//!
//! Fixtures: `tests/fixtures/corrupt-jpeg/` (`scripts/fixtures/corrupt_jpeg.py`): edits of a
//! 32x24 baseline and a progressive 4:2:0 JPEG (both decoded by libjpeg-turbo here), truncated at
//! several points, with bad Huffman tables, bad SOF fields (precision, dimensions, sampling,
//! quantisation table), an undefined table in SOS, garbage after SOI or in the scan. The manifest
//! holds PIL's verdict on each.

use std::panic::{catch_unwind, AssertUnwindSafe};

use safeguard_vision::{decode_image, DecodeLimits, VisionError};

use crate::common::fixtures;

struct Case {
    name: String,
    bytes: Vec<u8>,
    /// `None` when PIL refuses the file, else the size PIL decodes.
    pil_size: Option<(u32, u32)>,
}

fn cases() -> Vec<Case> {
    let dir = fixtures().join("corrupt-jpeg");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_object().unwrap();
    assert!(cases.len() >= 25, "manifest lists {} cases", cases.len());
    cases
        .iter()
        .map(|(name, verdict)| Case {
            name: name.clone(),
            bytes: std::fs::read(dir.join(format!("{name}.jpg"))).unwrap(),
            pil_size: match verdict["pil"].as_str().unwrap() {
                "error" => None,
                "ok" => {
                    let size = verdict["size"].as_array().unwrap();
                    let side = |i: usize| size[i].as_u64().unwrap() as u32;
                    Some((side(0), side(1)))
                }
                other => panic!("{name}: unknown verdict {other}"),
            },
        })
        .collect()
}

/// Every error variant that says "this input is refused" (as opposed to a config problem).
fn is_input_error(err: &VisionError) -> bool {
    matches!(
        err,
        VisionError::Malformed { .. }
            | VisionError::UnknownFormat
            | VisionError::Unsupported(_)
            | VisionError::ZeroSize { .. }
            | VisionError::DimensionsTooLarge { .. }
            | VisionError::TooManyPixels { .. }
            | VisionError::MemoryLimit { .. }
    )
}

/// The whole error chain as one line, to see which decoder refused the file.
fn chain(err: &VisionError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn corrupt_jpegs_are_typed_errors_wherever_pil_refuses_them() {
    let mut failures = Vec::new();
    let mut refused_by_libjpeg = Vec::new();
    let cases = cases();
    for case in &cases {
        let result = catch_unwind(AssertUnwindSafe(|| {
            decode_image(&case.bytes, &DecodeLimits::default())
        }));
        let verdict = match (&result, case.pil_size) {
            (Err(_), _) => Some("panicked".to_owned()),
            (Ok(Ok(image)), None) => Some(format!(
                "decoded {}x{} where PIL refuses the file",
                image.width(),
                image.height()
            )),
            (Ok(Ok(image)), Some(size)) if image.dimensions() != size => {
                Some(format!("decoded {:?}, PIL {size:?}", image.dimensions()))
            }
            (Ok(Err(err)), _) if !is_input_error(err) => Some(format!("unexpected {err:?}")),
            (Ok(Err(err)), Some(_)) => Some(format!("refused where PIL decodes: {}", chain(err))),
            (Ok(Err(err)), None) => {
                if chain(err).contains("libjpeg") {
                    refused_by_libjpeg.push(case.name.as_str());
                }
                None
            }
            (Ok(Ok(_)), Some(_)) => None,
        };
        let outcome = match &result {
            Ok(Ok(image)) => format!("Ok {:?}", image.dimensions()),
            Ok(Err(err)) => chain(err),
            Err(_) => "panic".to_owned(),
        };
        eprintln!("{:36} {outcome}", case.name);
        if let Some(why) = verdict {
            failures.push(format!("{}: {why}", case.name));
        }
        // Two bytes (`FF D8`) are not recognised as a JPEG at all; any longer cut is Malformed.
        let truncated = case.name.starts_with("truncated_")
            && !case.name.ends_with("_with_eoi")
            && case.bytes.len() > 2;
        if truncated && !matches!(result, Ok(Err(VisionError::Malformed { .. }))) {
            failures.push(format!(
                "{}: truncated, not Malformed: {result:?}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Some of these pass the `image` crate's header parser and are refused by libjpeg-turbo
    // itself (its error handler unwinds, `decode_image` catches it): that path must be tested.
    assert!(
        !refused_by_libjpeg.is_empty(),
        "no case reached libjpeg-turbo's error handler"
    );
    eprintln!("refused by libjpeg-turbo: {refused_by_libjpeg:?}");
}

#[test]
fn valid_fixtures_decode() {
    for name in ["valid_baseline", "valid_progressive"] {
        let bytes = std::fs::read(fixtures().join("corrupt-jpeg").join(format!("{name}.jpg")));
        let image = decode_image(&bytes.unwrap(), &DecodeLimits::default()).unwrap();
        assert_eq!(image.dimensions(), (32, 24), "{name}");
    }
}
