//! `safeguard train sft --config FILE.toml`: the training configuration.
//!
//! Every key is documented on its field below and in `docs/TRAINING.md`; an unknown key is an
//! error naming it. A file may start from a built-in preset (`preset = "paper"`, see
//! [`PRESETS`]) and override any key. Relative paths are resolved against the config file's
//! folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Result, TrainError};
use crate::lora::LoraSpec;
use crate::optim::{AdamWConfig, Schedule};

/// Built-in presets: name, TOML text.
pub const PRESETS: [(&str, &str); 3] = [
    ("paper", include_str!("../presets/paper.toml")),
    ("cpu-tiny", include_str!("../presets/cpu-tiny.toml")),
    ("cpu-small", include_str!("../presets/cpu-small.toml")),
];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// The preset this file started from (already applied; kept for the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The base model.
    pub model: ModelSection,
    /// Training and evaluation data.
    pub data: DataSection,
    /// LoRA hyper-parameters (`train.mode = "lora"`, the default).
    #[serde(default)]
    pub lora: Option<LoraSpec>,
    /// Optimisation.
    pub train: TrainSection,
    /// AdamW hyper-parameters (HF defaults).
    #[serde(default)]
    pub optim: AdamWConfig,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Model directory or Hugging Face id.
    pub path: String,
    /// Compute dtype of the base weights: f32 (CPU), bf16 or f16. Trainable tensors are f32.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[serde(default = "default_device")]
    pub device: String,
    /// Smallest image area after resizing [default: the model's preprocessor config].
    #[serde(default)]
    pub min_pixels: Option<usize>,
    /// Largest image area after resizing [default: the model's preprocessor config].
    #[serde(default)]
    pub max_pixels: Option<usize>,
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training JSONL (see [`crate::data`] for the two layouts).
    pub train: PathBuf,
    /// Held-out JSONL for the evaluation loss.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// Without `eval`: this fraction of `train` is held out instead (0 = no evaluation).
    #[serde(default)]
    pub eval_fraction: f64,
    /// Folder relative image paths are resolved against [default: each data file's folder].
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Examples with more tokens (images included) are skipped and counted.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Process examples in order of length (longest first) instead of shuffled per epoch.
    #[serde(default)]
    pub sort_by_length: bool,
}

fn default_max_length() -> usize {
    1024
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A LoRA adapter (`[lora]`); the base stays frozen.
    #[default]
    Lora,
    /// Every weight of the language model (embeddings, decoder, final norm, LM head); the
    /// vision tower stays frozen. Saved as a safetensors checkpoint transformers loads.
    Full,
}

/// How adapter tensors are named on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeftLayout {
    /// transformers ≥ 4.52 module names (`model.language_model.layers.N…`).
    #[default]
    Nested,
    /// Older transformers (`model.layers.N…`, `visual.…`).
    Legacy,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Run directory (checkpoints, metrics, final adapter).
    pub output_dir: PathBuf,
    /// `lora` or `full`.
    #[serde(default)]
    pub mode: Mode,
    /// Passes over the training data.
    #[serde(default = "one")]
    pub epochs: u64,
    /// Stop after this many optimizer steps (overrides `epochs`; the schedule spans them).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Rows per forward/backward pass (micro-batch).
    #[serde(default = "one_usize")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the loss is the token mean over all of them.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// `cosine`, `linear` or `constant` after the warmup.
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Warmup as a fraction of the steps (rounded up, as HF's `warmup_ratio`).
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Warmup steps (overrides `warmup_ratio`).
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Clip the global gradient norm to this (0 = no clipping).
    #[serde(default = "one_f64")]
    pub max_grad_norm: f64,
    /// Seed of every random choice (LoRA init, shuffling, holdout).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Write a checkpoint every this many steps (0 = only at the end).
    #[serde(default)]
    pub save_steps: u64,
    /// Checkpoints kept (oldest removed first; at least 1).
    #[serde(default = "two")]
    pub save_total_limit: usize,
    /// Evaluation loss every this many steps (and at the end, when there is held-out data).
    #[serde(default)]
    pub eval_steps: Option<u64>,
    /// A metrics line every this many steps.
    #[serde(default = "one")]
    pub logging_steps: u64,
    /// Recompute each decoder layer in the backward pass (far less memory, ~1/3 more time).
    #[serde(default = "yes")]
    pub recompute: bool,
    /// Target positions per LM-head chunk.
    #[serde(default = "default_chunk")]
    pub head_chunk: usize,
    /// Adapter key names: `nested` (transformers ≥ 4.52) or `legacy`.
    #[serde(default)]
    pub peft_layout: PeftLayout,
    /// Start from this PEFT adapter directory (ours or PEFT's) instead of a fresh
    /// initialisation; its r, alpha, rsLoRA and target modules must equal `[lora]`'s. Its key
    /// names are kept.
    #[serde(default)]
    pub init_adapter: Option<PathBuf>,
}

fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn default_seed() -> u64 {
    42
}
fn default_chunk() -> usize {
    512
}
fn default_schedule() -> Schedule {
    Schedule::Cosine
}

/// Recursively overrides `base` with `over` (tables merge, other values replace).
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

impl SftConfig {
    /// Parses TOML text, applying its `preset` first; relative paths resolved against `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Self> {
        let bad = |reason: String| TrainError::Config { reason };
        let value: toml::Value = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let value = match value.get("preset").and_then(toml::Value::as_str) {
            None => value,
            Some(name) => {
                let (_, preset) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                    bad(format!(
                        "unknown preset `{name}` (known: {})",
                        PRESETS.map(|p| p.0).join(", ")
                    ))
                })?;
                let mut merged: toml::Value = toml::from_str(preset).expect("presets parse");
                merge(&mut merged, value);
                merged
            }
        };
        let mut cfg: SftConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_str(&text, base).map_err(|e| match e {
            TrainError::Config { reason } => TrainError::Config {
                reason: format!("{}: {reason}", path.display()),
            },
            other => other,
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data.train);
        if let Some(p) = &mut self.data.eval {
            fix(p);
        }
        if let Some(p) = &mut self.data.image_root {
            fix(p);
        }
        fix(&mut self.train.output_dir);
        if let Some(p) = &mut self.train.init_adapter {
            fix(p);
        }
        // A model path that exists relative to the config is a directory; anything else may
        // be a hub id.
        let local = base.join(&self.model.path);
        if Path::new(&self.model.path).is_relative() && local.exists() {
            self.model.path = local.to_string_lossy().into_owned();
        }
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(TrainError::Config { reason });
        let t = &self.train;
        match (t.mode, &self.lora) {
            (Mode::Lora, None) => return bad("train.mode = \"lora\" needs a [lora] section".into()),
            (Mode::Lora, Some(spec)) => spec.validate()?,
            (Mode::Full, Some(_)) => {
                return bad(
                    "train.mode = \"full\" trains every weight: remove the [lora] section".into(),
                )
            }
            (Mode::Full, None) => {
                if self.train.init_adapter.is_some() {
                    return bad("train.init_adapter needs train.mode = \"lora\"".into());
                }
            }
        }
        if !(t.learning_rate.is_finite() && t.learning_rate >= 0.0) {
            return bad(format!(
                "train.learning_rate must be ≥ 0, not {}",
                t.learning_rate
            ));
        }
        if t.batch_size == 0 || t.grad_accum == 0 {
            return bad("train.batch_size and train.grad_accum must be at least 1".into());
        }
        if t.epochs == 0 && t.max_steps.is_none() {
            return bad("train.epochs must be at least 1 (or set train.max_steps)".into());
        }
        if t.max_steps == Some(0) {
            return bad("train.max_steps must be at least 1".into());
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return bad(format!(
                "train.warmup_ratio must be in [0, 1), not {}",
                t.warmup_ratio
            ));
        }
        if !(0.0..1.0).contains(&self.data.eval_fraction) {
            return bad(format!(
                "data.eval_fraction must be in [0, 1), not {}",
                self.data.eval_fraction
            ));
        }
        if self.data.eval.is_some() && self.data.eval_fraction > 0.0 {
            return bad("give data.eval or data.eval_fraction, not both".into());
        }
        if t.save_total_limit == 0 {
            return bad("train.save_total_limit must be at least 1".into());
        }
        if t.logging_steps == 0 || t.eval_steps == Some(0) || t.head_chunk == 0 {
            return bad(
                "train.logging_steps, train.eval_steps and train.head_chunk must be at least 1"
                    .into(),
            );
        }
        if !(t.max_grad_norm.is_finite() && t.max_grad_norm >= 0.0) {
            return bad(format!(
                "train.max_grad_norm must be ≥ 0, not {}",
                t.max_grad_norm
            ));
        }
        let o = &self.optim;
        let eps_ok = o.eps.is_finite() && o.eps > 0.0;
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) || !eps_ok {
            return bad("optim: beta1 and beta2 must be in [0, 1) and eps > 0".into());
        }
        if self.data.max_length < 2 {
            return bad("data.max_length must be at least 2".into());
        }
        Ok(())
    }

    /// The settings that decide the numbers a run produces, as a JSON object: everything
    /// except where it is written and how often it logs, evaluates and saves. A run directory
    /// only resumes under the same identity.
    pub fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("the config serialises");
        let train = v["train"].as_object_mut().expect("a table");
        for k in [
            "output_dir",
            "save_steps",
            "save_total_limit",
            "eval_steps",
            "logging_steps",
        ] {
            train.remove(k);
        }
        v.as_object_mut().expect("a table").remove("preset");
        v
    }
}

/// Keys (dotted paths) whose values differ between two identities, with both values.
pub fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: {a} then, {b} now")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}
