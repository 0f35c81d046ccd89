//! SafeGuard core: everything about a guard that is not a model.
//!
//! - [`policy`]: [`Policy`] (text + optional [`Rule`]s with a [`Stance`]), parsed from
//!   Markdown, TOML or raw text, and the built-in [`policy::presets`].
//! - [`prompt`]: renders a policy and an output [`Format`] into the Qwen2.5-VL chat template,
//!   policy before image so that requests under one policy share a token prefix.
//! - [`template`]: guard prompt templates ([`template::Template`]: SafeGuard's layout, the
//!   published guards' layouts, or a TOML file): system prompt, placement of policy and image,
//!   answer words, parser.
//! - [`verdict`]: one parser for every guard output we meet (bare words, `<think>/<answer>`,
//!   LlavaGuard JSON, Llama Guard, ShieldGemma), returning a [`Verdict`] or a typed
//!   [`NoVerdict`] — never a silent default.
//! - [`reward`]: the [`Reward`] trait, the paper's GRPO reward and a 0/1 accuracy reward.
//! - [`guard`]: the [`Guard`] trait every backend implements, and the [`Judgement`] it
//!   returns (safe, unsafe or *unassessed*).
//! - [`metrics`]: confusion counts, P/R/F1, the benchmark score, macro and pooled metrics,
//!   ROC-AUC and bootstrap intervals, over [`predictions`] rows.
//!
//! This crate has no model code and no network: it is safe to use from any tool.

pub mod error;
pub mod guard;
pub mod metrics;
pub mod policy;
pub mod predictions;
pub mod prompt;
pub mod reward;
pub mod template;
pub mod verdict;

pub use error::{Error, Result};
pub use guard::{Assessment, Guard, GuardRequest, Judgement};
pub use policy::{Policy, Rule, Stance};
pub use prompt::Format;
pub use reward::Reward;
pub use verdict::{NoVerdict, Verdict};
