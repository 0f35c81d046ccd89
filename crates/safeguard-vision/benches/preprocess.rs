//! Decode + preprocess throughput on one thread: `cargo bench -p safeguard-vision --bench
//! preprocess -- DIR [SECONDS]` (or `SAFEGUARD_BENCH_IMAGES=DIR`).
//!
//! Reads every image file in DIR into memory, then decodes and preprocesses them round-robin
//! for at least SECONDS (default 5) with the default `DecodeLimits` and `PreprocessConfig`, and
//! prints one JSON line: `{"images", "seconds", "images_per_s", "ms_per_image"}`. The companion
//! `scripts/bench/preprocess_reference.py` runs this and the Python reference in the same session
//! and reports the ratio (docs/BENCHMARKS.md). No criterion: the harness adds nothing here but
//! build time.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use safeguard_vision::{decode_and_preprocess, DecodeLimits, PreprocessConfig};

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dir = args
        .first()
        .cloned()
        .or_else(|| std::env::var("SAFEGUARD_BENCH_IMAGES").ok());
    let Some(dir) = dir else {
        eprintln!("usage: preprocess DIR [SECONDS]  (or set SAFEGUARD_BENCH_IMAGES); skipping");
        return;
    };
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!inputs.is_empty(), "no images in {dir}");
    let (limits, cfg) = (DecodeLimits::default(), PreprocessConfig::default());

    // Warm-up, and a check that every input is accepted.
    for (path, bytes) in files.iter().zip(&inputs) {
        decode_and_preprocess(bytes, &limits, &cfg)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < budget || done < inputs.len() {
        let bytes = &inputs[done % inputs.len()];
        black_box(decode_and_preprocess(black_box(bytes), &limits, &cfg).unwrap());
        done += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"images\": {done}, \"seconds\": {elapsed:.3}, \"images_per_s\": {:.2}, \"ms_per_image\": {:.3}}}",
        done as f64 / elapsed,
        1000.0 * elapsed / done as f64
    );
}
