//! `safeguard bench` on the tiny random-weight shape: every configuration is measured and the
//! cache-on runs are served from the policy-prefix cache.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny-guard fixture's tokenizer, else the Qwen tokenizer of `scripts/fetch-tokenizer`.
fn tokenizer() -> Option<PathBuf> {
    [
        "crates/safeguard-engine/tests/fixtures/tiny-guard/tokenizer.json",
        "target/assets/qwen-tokenizer/tokenizer.json",
    ]
    .iter()
    .map(|p| workspace().join(p))
    .find(|p| p.is_file())
}

#[test]
fn bench_tiny_measures_every_configuration() {
    let Some(tokenizer) = tokenizer() else {
        panic!("no tokenizer: commit the tiny-guard fixture or run scripts/fetch-tokenizer");
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .current_dir(workspace())
        .args([
            "bench",
            "--shape",
            "tiny",
            "--requests",
            "2",
            "--batch-sizes",
            "1,2",
        ])
        .args([
            "--mode",
            "both",
            "--max-new-tokens",
            "4",
            "--warmup",
            "0",
            "--json",
        ])
        .arg(&out)
        .arg("--tokenizer")
        .arg(&tokenizer)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("images/s"), "{stdout}");
    assert!(stdout.contains("rule questions: on"), "{stdout}");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let results = value["results"].as_array().unwrap();
    let mut seen = Vec::new();
    for r in results {
        let (mode, batch, cache) = (
            r["mode"].as_str().unwrap().to_string(),
            r["batch"].as_u64().unwrap(),
            r["cache"].as_bool().unwrap(),
        );
        for key in [
            "images_per_s",
            "ms_per_image_p50",
            "ms_per_image_p95",
            "prefill_tokens_per_s",
        ] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key} of {r}");
        }
        assert_eq!(r["images"], 2, "{r}");
        if cache {
            assert!(r["cache_hits"].as_u64().unwrap() > 0, "no cache hits: {r}");
            assert_eq!(r["cache_misses"], 0, "{r}");
        } else {
            assert_eq!(r["cache_hits"], 0, "{r}");
        }
        if mode == "reason" {
            assert!(r["generated_tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        }
        seen.push((mode, batch, cache));
    }
    seen.sort();
    let mut expected = Vec::new();
    for mode in ["reason", "score"] {
        for batch in [1, 2] {
            for cache in [false, true] {
                expected.push((mode.to_string(), batch, cache));
            }
        }
    }
    assert_eq!(seen, expected);
    for key in ["cpu", "cores", "threads"] {
        assert!(!value["machine"][key].is_null(), "machine.{key}");
    }
    assert_eq!(value["shape"], "tiny");
    assert_eq!(value["cache_speedups"].as_array().unwrap().len(), 4);
}
