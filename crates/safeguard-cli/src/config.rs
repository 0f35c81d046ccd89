//! The optional configuration file: defaults for the flags that pick and load a model, so that
//! `safeguard check` uses the local VLM without `--model` on every call.
//!
//! Looked up at `$SAFEGUARD_CONFIG`, else `$XDG_CONFIG_HOME/safeguard/config.toml`, else
//! `~/.config/safeguard/config.toml`. A command-line flag or its environment variable wins
//! over the file. Unknown keys are an error (a typo must not silently fall back to lite).
//!
//! ```toml
//! model = "/models/Qwen2.5-VL-7B-Instruct"   # or a Hugging Face id
//! device = "cuda"
//! dtype = "bf16"
//! endpoints = ["http://10.0.0.5:8000/v1"]    # remote backend
//! remote_model = "Qwen/Qwen2.5-VL-7B-Instruct"
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The file's contents; every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model directory or Hugging Face id for the local backend.
    pub model: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: Option<String>,
    /// `f32`, `bf16` or `f16`.
    pub dtype: Option<String>,
    /// OpenAI-compatible base URLs for the remote backend.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The `model` name sent to the remote endpoints.
    pub remote_model: Option<String>,
}

/// Where the file is looked for (it may not exist).
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SAFEGUARD_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("safeguard/config.toml"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/safeguard/config.toml"))
}

/// Reads the file if there is one; `$SAFEGUARD_CONFIG` naming a missing file is an error.
pub fn load() -> anyhow::Result<(Config, Option<PathBuf>)> {
    let Some(path) = path() else {
        return Ok((Config::default(), None));
    };
    let explicit = std::env::var_os("SAFEGUARD_CONFIG").is_some();
    if !path.is_file() {
        if explicit {
            anyhow::bail!(
                "SAFEGUARD_CONFIG names {}, which does not exist",
                path.display()
            );
        }
        return Ok((Config::default(), None));
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: Config =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    Ok((config, Some(path)))
}
