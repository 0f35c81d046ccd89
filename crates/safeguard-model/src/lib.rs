//! Model code of SafeGuard, in candle: no file or network I/O (that is `safeguard-engine`).
//!
//! - [`qwen2_5_vl`]: Qwen2.5-VL. [`qwen2_5_vl::Config`] parses `config.json` (flat or nested
//!   layout); [`qwen2_5_vl::Qwen2_5VlModel`] stitches the [`qwen2_5_vl::VisionModel`] and the
//!   [`qwen2_5_vl::TextModel`] together and runs prompts against a [`qwen2_5_vl::KvCache`];
//!   [`qwen2_5_vl::rope_index()`] computes the multimodal position ids.
//! - [`lora`]: PEFT LoRA adapters, merged into the weights at load time.
//! - [`layers`]: shared blocks (RMSNorm, attention, RoPE application).
//!
//! Constructors take a `&Config` and a `candle_nn::VarBuilder` whose paths are the checkpoint's
//! tensor names, so a missing or mis-shaped weight fails with candle's error naming the tensor.
//! The `cuda` feature enables candle's CUDA backend (needs nvcc to build; off by default).

pub mod layers;
pub mod lora;
pub mod qwen2_5_vl;

mod error;

pub use error::ModelError;
