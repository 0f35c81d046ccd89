//! Turns files on disk into a running Qwen2.5-VL: every piece of I/O around the model code of
//! `safeguard-model` lives here.
//!
//! - [`hub`]: `--model DIR|OWNER/NAME` → a local directory ([`hub::resolve_model`]), through the
//!   `hf-hub` cache, with a clear message offline.
//! - [`weights`]: `config.json`, memory-mapped safetensors (single file or sharded with an
//!   index), dtype chosen at load time, PEFT LoRA merged at load ([`weights::load_model`]).
//! - [`tokenizer`]: `tokenizer.json`, the chat template, image-placeholder expansion.
//! - [`sampling`]: greedy/temperature/top-k/top-p decoding with stop tokens and log-probs,
//!   [`sampling::generate`], and verdict scoring ([`sampling::p_unsafe`]).
//!
//! Not here yet (later issues): the `Guard` trait and backends, batching, the prefix-cache
//! manager (the model's KV cache already supports reuse of a cached prefix).
//!
//! The `cuda` feature builds candle with CUDA (needs nvcc; off by default).

pub mod hub;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

mod error;

/// Re-exported so that callers (the CLI, tests) use the same tensor types without their own
/// candle dependency.
pub use candle_core;
pub use error::EngineError;
pub use weights::{load_model, LoadOptions, LoadedModel, LoraMode};

/// The device to run on: CUDA device 0 when built with `cuda` and `prefer_gpu`, else the CPU.
pub fn device(prefer_gpu: bool) -> Result<candle_core::Device, EngineError> {
    if prefer_gpu && candle_core::utils::cuda_is_available() {
        return Ok(candle_core::Device::new_cuda(0)?);
    }
    Ok(candle_core::Device::Cpu)
}
