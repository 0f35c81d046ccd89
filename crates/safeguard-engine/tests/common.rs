//! Shared helpers: fixture paths and array comparison.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `crates/safeguard-model/tests/fixtures/qwen25vl` (made by
/// `scripts/fixtures/make_qwen25vl_tiny.py`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../safeguard-model/tests/fixtures/qwen25vl")
}

/// Reads an `.npy` file.
pub fn npy(path: impl Into<PathBuf>) -> Tensor {
    let path = path.into();
    Tensor::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An `.npy` of integers as a flat `Vec<i64>`.
pub fn npy_i64(path: impl Into<PathBuf>) -> Vec<i64> {
    npy(path)
        .flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
}

/// `max |a − b| / (max(b) − min(b))`, both read as f32.
pub fn rel_max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let range = (b.max(0).unwrap() - b.min(0).unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / range
}

/// The image names of the fixture set, in index order (`manifest.json`).
pub fn image_names() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}
