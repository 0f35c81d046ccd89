//! Training for SafeGuard on candle: trainable LoRA adapters in PEFT's format ([`lora`]),
//! AdamW with exposed state and HF's schedules ([`optim`]), and Stage 1 of the recipe,
//! supervised fine-tuning on image → recaption conversations ([`sft`], [`data`]).
//!
//! Gradients come from `safeguard-model` itself (no second implementation): its layers switch
//! to differentiable composites when their input carries a graph, frozen weights keep no
//! gradient, and [`safeguard_model::qwen2_5_vl::train`] runs the per-layer recomputed pass.

pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod full;
pub mod grad;
pub mod lora;
pub mod merge;
pub mod optim;
pub mod sft;

pub use error::{Result, TrainError};
