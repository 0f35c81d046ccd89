//! Loads a Qwen2.5-VL checkpoint directory through [`safeguard_engine::load_model`] (the real
//! loading path: config, memory-mapped safetensors, dtype conversion) and reports the load time
//! and the process's memory, to check that weights are not materialised twice.
//!
//! Usage: `load_peak MODEL_DIR [DTYPE]` (DTYPE f32, bf16 or f16; default bf16). Linux only
//! for the memory figures (read from `/proc/self/status`). Prints one JSON line:
//! `load_s`, `weights_bytes` (the safetensors files' sizes), `vm_hwm_kib` (peak resident set,
//! as the kernel records it), `peak_rss_anon_kib` / `peak_rss_file_kib` (highest values seen
//! by a 10 ms sampler: heap copies vs. pages of the memory-mapped files) and the same figures
//! once loading has returned, with the model still alive.
//!
//! `scripts/fixtures/make_qwen25vl_7b_sparse.py` builds a 7B-shaped checkpoint to run it on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use safeguard_engine::weights::{find_weights, parse_dtype};
use safeguard_engine::{load_model, LoadOptions};

/// One field of `/proc/self/status`, in KiB (0 when absent, e.g. not on Linux).
fn status_kib(field: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        (2..=3).contains(&args.len()),
        "usage: load_peak MODEL_DIR [DTYPE]"
    );
    let dir = PathBuf::from(&args[1]);
    let dtype = parse_dtype(args.get(2).map_or("bf16", String::as_str))?;
    let weights_bytes: u64 = find_weights(&dir)?
        .paths()
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()
        .context("reading the shard sizes")?;

    let stop = Arc::new(AtomicBool::new(false));
    let (anon, file) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (stop, anon, file) = (stop.clone(), anon.clone(), file.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                anon.fetch_max(status_kib("RssAnon"), Ordering::Relaxed);
                file.fetch_max(status_kib("RssFile"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let before_kib = status_kib("VmRSS");
    let t0 = Instant::now();
    let loaded = load_model(
        &dir,
        &LoadOptions {
            dtype,
            ..LoadOptions::default()
        },
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler thread");
    println!(
        "{}",
        serde_json::json!({
            "dir": dir.display().to_string(),
            "dtype": format!("{dtype:?}"),
            "layout": format!("{:?}", loaded.layout),
            "load_s": load_s,
            "weights_bytes": weights_bytes,
            "rss_before_kib": before_kib,
            "vm_hwm_kib": status_kib("VmHWM"),
            "peak_rss_anon_kib": anon.load(Ordering::Relaxed),
            "peak_rss_file_kib": file.load(Ordering::Relaxed),
            "after_rss_anon_kib": status_kib("RssAnon"),
            "after_rss_file_kib": status_kib("RssFile"),
        })
    );
    drop(loaded);
    Ok(())
}
