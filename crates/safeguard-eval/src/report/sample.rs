//! Synthetic run directories, for tests, documentation screenshots and trying `safeguard
//! report` without a model: images with a hidden "severity", five policies L1 (permissive) …
//! L5 (restrictive) that call an image unsafe above a policy cutoff, and a fake guard that
//! judges with a noisy severity and the cutoff of the policy it was "trained on".

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safeguard_core::metrics;
use serde_json::{json, Value};

use super::io_error;
use super::run::{load_run, Row};
use super::ReportError;

/// Severity above which an image is unsafe under L1 … L5 (L1: nothing is unsafe).
pub const CUTOFFS: [(&str, f64); 5] = [
    ("L1", 1.01),
    ("L2", 0.85),
    ("L3", 0.7),
    ("L4", 0.5),
    ("L5", 0.35),
];

const CATEGORIES: [&str; 4] = ["nudity", "violence", "weapons", "hate"];

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRun {
    /// `run.json` name.
    pub name: String,
    /// Seed of every random choice: the same seed writes the same files.
    pub seed: u64,
    /// Images; each is judged under every policy. Rounded up to an even number (pairs).
    pub images: usize,
    /// Noise of the fake guard's view of severity (0 = perfect).
    pub noise: f64,
    /// The guard judges every policy with this policy's cutoff (a model trained on it);
    /// `None` = with each policy's own cutoff.
    pub trained_on: Option<String>,
    /// Write `p_unsafe` (score mode) or not (reason mode).
    pub scores: bool,
    /// Write a small JPEG thumbnail per image.
    pub thumbs: bool,
    /// Write `summary.json`.
    pub summary: bool,
    /// Share of items left unassessed (half of them with an error).
    pub unassessed: f64,
}

impl Default for SampleRun {
    fn default() -> Self {
        SampleRun {
            name: "sample".into(),
            seed: 0,
            images: 24,
            noise: 0.3,
            trained_on: None,
            scores: true,
            thumbs: true,
            summary: true,
            unassessed: 0.03,
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    std::fs::write(path, bytes).map_err(|e| io_error(path, e))
}

fn cutoff(policy: &str) -> f64 {
    CUTOFFS
        .iter()
        .find(|(p, _)| *p == policy)
        .map_or(0.5, |(_, c)| *c)
}

/// Writes `run.json`, `predictions.jsonl`, optionally `summary.json` and `thumbs/*.jpg` into
/// `dir` (created if needed).
pub fn write_run(dir: &Path, sample: &SampleRun) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(sample.seed);
    let images = sample.images.div_ceil(2) * 2;
    // Pairs: an original and a milder edit of it.
    let severity: Vec<f64> = (0..images / 2)
        .flat_map(|_| {
            let original: f64 = rng.random_range(0.3..1.0);
            let edit = original * rng.random_range(0.2..0.6);
            [original, edit]
        })
        .collect();
    if sample.thumbs {
        let thumbs = dir.join("thumbs");
        std::fs::create_dir_all(&thumbs).map_err(|e| io_error(&thumbs, e))?;
        for (i, s) in severity.iter().enumerate() {
            let path = thumbs.join(format!("img{i:03}.jpg"));
            write(&path, &thumbnail(*s, &mut rng))?;
        }
    }
    let threshold = 0.5;
    let mut lines = String::new();
    let mut rows = Vec::new();
    for (policy, own_cutoff) in CUTOFFS {
        let guard_cutoff = sample.trained_on.as_deref().map_or(own_cutoff, cutoff);
        for (i, s) in severity.iter().enumerate() {
            let unsafe_ = *s > own_cutoff;
            let seen = s + sample.noise * (rng.random::<f64>() - 0.5) * 2.0;
            let p = 1.0 / (1.0 + (-(seen - guard_cutoff.min(1.0)) * 9.0).exp());
            let p = (p * 1000.0).round() / 1000.0;
            let roll: f64 = rng.random();
            let mut row = json!({
                "id": format!("img{i:03}/{policy}"),
                "policy": policy,
                "label": if unsafe_ { "unsafe" } else { "safe" },
                "category": CATEGORIES[i / 2 % CATEGORIES.len()],
                "source": if i % 3 == 0 { "generated" } else { "real" },
                "pair_id": format!("pair{:03}", i / 2),
                "latency_ms": (40.0 + 30.0 * rng.random::<f64>()).round(),
            });
            if roll < sample.unassessed {
                row["pred"] = Value::Null;
                if roll < sample.unassessed / 2.0 {
                    row["error"] = json!("remote endpoint timed out after 30 s");
                } else {
                    row["output"] = json!("I cannot help with that.");
                }
            } else {
                let unsafe_pred = p >= threshold;
                row["pred"] = json!(if unsafe_pred { "unsafe" } else { "safe" });
                if sample.scores {
                    row["p_unsafe"] = json!(p);
                }
                row["rationale"] = json!(if unsafe_pred {
                    format!(
                        "The image shows {} that the policy {policy} does not allow.",
                        CATEGORIES[i / 2 % CATEGORIES.len()]
                    )
                } else {
                    format!("Nothing in the image breaks policy {policy}; the scene is acceptable.")
                });
                if unsafe_pred {
                    row["rules_hit"] = json!([format!("{policy}.{}", 1 + i % 3)]);
                }
            }
            if sample.thumbs {
                row["thumb"] = json!(format!("thumbs/img{i:03}.jpg"));
            }
            lines.push_str(&row.to_string());
            lines.push('\n');
            rows.push(row);
        }
    }
    write(&dir.join("predictions.jsonl"), lines.as_bytes())?;
    let n = rows.len();
    let errors = rows.iter().filter(|r| r.get("error").is_some()).count();
    let meta = json!({
        "name": sample.name,
        "dataset": {"path": "demo/safeedit-demo.parquet", "format": "safeeditbench", "name": "SafeEdit demo", "items": n},
        "backend": "remote",
        "model": format!("demo-guard-{}", sample.trained_on.as_deref().unwrap_or("all")),
        "mode": if sample.scores { "score" } else { "reason" },
        "threshold": threshold,
        "policies": CUTOFFS.iter().map(|(p, _)| (p.to_string(), json!({"hash": format!("{:016x}", (sample.seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (p.as_bytes()[1] as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)), "text": format!("Policy {p}")}))).collect::<serde_json::Map<_, _>>(),
        "code_version": "0.1.0",
        "machine": {"os": "linux", "cpu": "demo cpu", "cores": 2},
        "started": "2025-06-01T10:00:00Z",
        "finished": "2025-06-01T10:03:05Z",
        "elapsed_s": 185.0,
        "items_done": n,
        "errors": errors,
    });
    write(&dir.join("run.json"), meta.to_string().as_bytes())?;
    if sample.summary {
        let run = load_run(dir)?;
        let predictions: Vec<_> = run.rows.iter().filter_map(Row::prediction).collect();
        let mut summary = serde_json::to_value(metrics::compute(&predictions))
            .expect("metrics serialise to JSON");
        summary["per_category"] = json!(run.per_category);
        summary["per_source"] = json!(run.per_source);
        summary["pairs"] = json!(run
            .pairs
            .map(|p| json!({"n": p.n, "both_correct": p.both_correct, "accuracy": p.accuracy})));
        summary["unassessed"] = json!(run.unassessed);
        summary["errors"] = json!(run.errors);
        write(&dir.join("summary.json"), summary.to_string().as_bytes())?;
    }
    Ok(())
}

/// A 48×48 JPEG: a colour wash whose warmth follows severity, with a seeded blob.
fn thumbnail(severity: f64, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (cx, cy, r) = (
        rng.random_range(12.0..36.0),
        rng.random_range(12.0..36.0),
        rng.random_range(6.0..14.0f64),
    );
    let img = image::RgbImage::from_fn(48, 48, |x, y| {
        let (fx, fy) = (x as f64, y as f64);
        let inside = (fx - cx).powi(2) + (fy - cy).powi(2) < r * r;
        let warm = (severity * 255.0) as u8;
        if inside {
            image::Rgb([255 - warm / 3, 240 - warm / 2, 200 - warm / 2])
        } else {
            image::Rgb([
                60 + warm / 2,
                90 + (fy * 2.0) as u8,
                170u8.saturating_sub(warm / 2) + (fx as u8),
            ])
        }
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80)
        .encode_image(&img)
        .expect("encoding a JPEG into memory cannot fail");
    bytes
}
