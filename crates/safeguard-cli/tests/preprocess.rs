//! `safeguard debug preprocess`: the real binary on the vision crate's fixture images.

use std::path::{Path, PathBuf};
use std::process::Command;

use safeguard_vision::{decode_image, preprocess, DecodeLimits, PreprocessConfig};

use crate::cli_common::{fails, safeguard};

fn image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../safeguard-vision/tests/fixtures/images")
        .join(name)
}

/// Reads `pixel_values.npy` (little-endian f32, 2-D) back as (shape, values).
fn read_npy_f32(path: &Path) -> ([usize; 2], Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "header must be 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let dims: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let values = bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ([dims[0], dims[1]], values)
}

fn grid(dir: &Path) -> Vec<usize> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("grid_thw.json")).unwrap()).unwrap()
}

#[test]
fn writes_the_library_output_with_default_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/out");
    let path = image("gradient.png");
    let run = safeguard(&[
        "debug",
        "preprocess",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(grid(&out), [1, 14, 22]);
    let (shape, values) = read_npy_f32(&out.join("pixel_values.npy"));
    assert_eq!(shape, [14 * 22, 1176]);
    let decoded = decode_image(&std::fs::read(&path).unwrap(), &DecodeLimits::default()).unwrap();
    let expected = preprocess(&decoded, &PreprocessConfig::default()).unwrap();
    assert_eq!(values, expected.pixel_values);
}

#[test]
fn pixel_bounds_come_from_flags_env_and_model_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = image("gradient.png"); // 300x200
    let out = dir.path().join("flags");
    let args = [
        "debug",
        "preprocess",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let run = safeguard(
        &[
            &args[..],
            &["--min-pixels", "3136", "--max-pixels", "18816"],
        ]
        .concat(),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(grid(&out), [1, 8, 12]);

    let run = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .env("SAFEGUARD_MAX_PIXELS", "12544")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(grid(&out), [1, 6, 8]);

    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 3136, "longest_edge": 18816}}"#,
    )
    .unwrap();
    let run = safeguard(&[&args[..], &["--model", model.to_str().unwrap()]].concat());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(grid(&out), [1, 8, 12]);
}

#[test]
fn input_errors_exit_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let path = image(name);
        fails(
            &[
                &["debug", "preprocess", path.to_str().unwrap(), "--out", out][..],
                extra,
            ]
            .concat(),
        )
    };
    assert!(run("odd_1x1000.png", &[]).contains("aspect ratio"));
    assert!(run("bomb_50000x50000.png", &[]).contains("50000x50000"));
    assert!(run(
        "gradient.png",
        &["--min-pixels", "9000", "--max-pixels", "100"]
    )
    .contains("min_pixels"));
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err = fails(&["debug", "preprocess", empty.to_str().unwrap(), "--out", out]);
    assert!(err.contains("empty"), "{err}");
    assert!(!Path::new(out).join("pixel_values.npy").exists());
}
