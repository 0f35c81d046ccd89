//! A 12-megapixel phone photo under the released checkpoints' `max_pixels` (12 845 056) on the
//! tiny trained checkpoint: ~62k patches in the vision tower's full-attention block and ~15.5k
//! image tokens in the prefill. Eager attention needs 31 GB for the vision scores alone; the
//! tiled path must finish within a stated peak RSS, measured on the real `safeguard check`
//! process. The image-token budget refuses it with a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cli_common::safeguard;

fn tiny_guard() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../safeguard-engine/tests/fixtures/tiny-guard")
}

/// A copy of the tiny guard whose preprocessor config is the released checkpoints' one.
fn with_released_pixel_bounds(dir: &Path) {
    for entry in std::fs::read_dir(tiny_guard()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let config = serde_json::json!({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor"
    });
    std::fs::write(dir.join("preprocessor_config.json"), config.to_string()).unwrap();
}

/// A 4000 × 3000 JPEG with some structure (gradients and blocks), as a camera would give.
fn photo(path: &Path) {
    let img = image::RgbImage::from_fn(4000, 3000, |x, y| {
        let block = ((x / 250) + (y / 250)) % 2 == 0;
        image::Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            if block { 200 } else { 40 },
        ])
    });
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

/// Peak RSS (`VmHWM`) of `safeguard ARGS`, polled from `/proc` until it exits, and its output.
fn peak_rss(args: &[&str]) -> (u64, std::process::Output) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb << 10);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (peak, child.wait_with_output().unwrap())
}

/// What the test allows: 768 MiB. Measured 443 MiB on 2026-12-01 (debug build, mimalloc); see
/// docs/BENCHMARKS.md "Memory against image size"; pixel_values alone are 292 MB.
const PEAK_BOUND: u64 = 768 << 20;

#[test]
fn a_12_megapixel_photo_runs_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    with_released_pixel_bounds(dir.path());
    let photo_path = dir.path().join("photo.jpg");
    photo(&photo_path);
    let model = dir.path().to_str().unwrap();
    let photo = photo_path.to_str().unwrap();
    let policy = "No photos of weapons or of people smoking.";
    let (peak, out) = peak_rss(&[
        "check", photo, "--policy", policy, "--model", model, "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let p = row["p_unsafe"].as_f64().unwrap_or_else(|| panic!("{row}"));
    assert!((0.0..=1.0).contains(&p), "{row}");
    eprintln!("12-MP photo: peak RSS {} MiB", peak >> 20);
    assert!(
        peak < PEAK_BOUND,
        "peak RSS {} MiB is over the bound of {} MiB",
        peak >> 20,
        PEAK_BOUND >> 20
    );

    // The budget refuses the same photo before any pixel work, naming the sizes.
    let out = safeguard(&[
        "check",
        photo,
        "--policy",
        policy,
        "--model",
        model,
        "--max-image-tokens",
        "4096",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("4000x3000") && text.contains("4096") && text.contains("--max-image-tokens"),
        "{text}"
    );
}
