//! Turns files on disk into a running Qwen2.5-VL: every piece of I/O around the model code of
//! `safeguard-model` lives here.
//!
//! - [`hub`]: `--model DIR|OWNER/NAME` → a local directory ([`hub::resolve_model`]), through the
//!   `hf-hub` cache, with a clear message offline.
//! - [`weights`]: `config.json`, memory-mapped safetensors (single file or sharded with an
//!   index), dtype chosen at load time, PEFT LoRA merged at load ([`weights::load_model`]).
//! - [`tokenizer`]: `tokenizer.json`, the chat template, image-placeholder expansion.
//! - [`chat_template`]: a checkpoint's own Jinja chat template, rendered as transformers does.
//! - [`generation`]: `generation_config.json` (stop ids, sampling defaults).
//! - [`sampling`]: greedy/temperature/top-k/top-p decoding with stop tokens and log-probs,
//!   [`sampling::generate`], and verdict scoring ([`sampling::p_unsafe`]).
//! - [`scheduler`]: a dynamic batcher ([`scheduler::Batcher`]): concurrent callers' jobs run
//!   together in batches of up to `max_batch`, grouped by key, with a bounded queue
//!   (`QueueFull` for backpressure).
//!
//! - [`local`]: the local backend, [`local::LocalGuard`], implementing `safeguard_core`'s
//!   `Guard`: score mode, rules hit, reason mode.
//! - [`prefix_cache`]: the policy-prefix KV cache (LRU, bounded in bytes).
//!
//! The `cuda` feature builds candle with CUDA (needs nvcc; off by default).

pub mod chat;
pub mod chat_template;
pub mod generation;
pub mod hub;
pub mod local;
pub mod prefix_cache;
pub mod sampling;
pub mod scheduler;
pub mod shapes;
pub mod tokenizer;
pub mod weights;

mod error;

/// Re-exported so that callers (the CLI, tests) use the same tensor types without their own
/// candle dependency.
pub use candle_core;
pub use error::EngineError;
pub use local::{LocalGuard, LocalGuardOptions};
pub use weights::{load_model, load_model_with, LoadOptions, LoadedModel, LoraMode};

/// Parses a device name: `cpu`, `cuda` or `cuda:N`. CUDA needs a build with the `cuda`
/// feature (`cargo build -p safeguard-cli --features safeguard-engine/cuda`) and a GPU.
pub fn parse_device(name: &str) -> Result<candle_core::Device, EngineError> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = match name.as_str() {
        "cuda" => Some(0),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(ordinal) = ordinal else {
        return Err(EngineError::Input {
            reason: format!("unknown device `{name}`: use cpu, cuda or cuda:N"),
        });
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(EngineError::Input {
            reason: format!(
                "device `{name}`: this build has no CUDA support (rebuild with the `cuda` feature \
                 of safeguard-engine, which needs nvcc)"
            ),
        });
    }
    Ok(candle_core::Device::new_cuda(ordinal)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn devices_parse_and_cuda_is_refused_without_the_feature() {
        assert!(super::parse_device("cpu").unwrap().is_cpu());
        assert!(super::parse_device("tpu").is_err());
        assert!(super::parse_device("cuda:x").is_err());
        if !candle_core::utils::cuda_is_available() {
            let err = super::parse_device("cuda").unwrap_err().to_string();
            assert!(err.contains("cuda"), "{err}");
        }
    }
}
