//! Lite backend throughput on one thread: `cargo bench -p safeguard-lite --bench score -- DIR
//! [SECONDS]` (or `SAFEGUARD_BENCH_IMAGES=DIR`).
//!
//! Reads every image in DIR into memory, then decodes, preprocesses and scores them
//! round-robin with the embedded open_nsfw model for at least SECONDS (default 5), and prints
//! one JSON line `{"images", "seconds", "images_per_s", "ms_per_image"}`. The companion
//! `scripts/bench/lite_reference.py` runs this and the reference package (onnxruntime) in the
//! same session and reports the ratio (docs/BENCHMARKS.md).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use safeguard_lite::OpenNsfw;
use safeguard_vision::{decode_image, DecodeLimits};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(dir) = args
        .first()
        .cloned()
        .or_else(|| std::env::var("SAFEGUARD_BENCH_IMAGES").ok())
    else {
        eprintln!("usage: score DIR [SECONDS]  (or set SAFEGUARD_BENCH_IMAGES); skipping");
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
    let model = OpenNsfw::embedded().expect("embedded model");
    let limits = DecodeLimits::default();
    let run = |bytes: &[u8]| {
        let image = decode_image(bytes, &limits).unwrap();
        model.score(&image).unwrap()
    };
    for bytes in &inputs {
        black_box(run(bytes));
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < budget || done < inputs.len() {
        black_box(run(black_box(&inputs[done % inputs.len()])));
        done += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"images\": {done}, \"seconds\": {elapsed:.3}, \"images_per_s\": {:.3}, \"ms_per_image\": {:.3}}}",
        done as f64 / elapsed,
        1000.0 * elapsed / done as f64
    );
}
