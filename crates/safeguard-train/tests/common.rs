//! Shared helpers.

use std::path::PathBuf;

use candle_core::{DType, Tensor};

/// `crates/safeguard-train/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `crates/safeguard-model/tests/fixtures/qwen25vl`.
pub fn model_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../safeguard-model/tests/fixtures/qwen25vl")
}

/// `crates/safeguard-engine/tests/fixtures/tiny-guard` (a checkpoint with a tokenizer).
pub fn tiny_guard() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../safeguard-engine/tests/fixtures/tiny-guard")
}

/// `max |a − b| / max |b|` in f64.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / scale.max(1e-30)
}
