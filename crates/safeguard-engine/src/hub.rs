//! Resolving `--model` to a local directory: an existing directory as is, or a Hugging Face
//! repository id (`Qwen/Qwen2.5-VL-7B-Instruct`) through the `hf-hub` cache
//! (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), downloading what is missing when the
//! network is allowed.
//!
//! Offline (no network, or `HF_HUB_OFFLINE=1`), a repository id resolves only if the cache
//! already holds the snapshot; otherwise the error says where to put the files.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use crate::weights::{INDEX_FILE, SINGLE_FILE};
use crate::EngineError;

/// Files fetched besides the weights; only `config.json` is required.
const REQUIRED: &[&str] = &["config.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer.json",
    "preprocessor_config.json",
    // transformers v5 saves the image-processor settings here instead.
    "processor_config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Where [`resolve_model`] may look.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Never use the network (also forced by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// The hub cache; `None` = `hf_hub::Cache::from_env()`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for HubOptions {
    fn default() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Self {
            offline,
            cache_dir: None,
        }
    }
}

/// Whether `spec` has the shape of a hub id (`owner/name`, no other path separators) rather
/// than a path.
pub fn looks_like_repo_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..")
        && !spec.starts_with('.')
        && !spec.contains('\\')
}

/// Resolves `spec` (a directory or a hub id) to a directory holding `config.json` and the
/// weights.
pub fn resolve_model(spec: &str, opts: &HubOptions) -> Result<PathBuf, EngineError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(spec) {
        return Err(EngineError::MissingFile {
            path: path.to_path_buf(),
            hint: "--model takes a model directory (config.json, *.safetensors, tokenizer.json) or a Hugging Face id such as Qwen/Qwen2.5-VL-7B-Instruct".into(),
        });
    }
    let cache = opts
        .cache_dir
        .clone()
        .map(Cache::new)
        .unwrap_or_else(Cache::from_env);
    if let Some(dir) = cached_snapshot(&cache, spec) {
        return Ok(dir);
    }
    let hint = offline_hint(&cache, spec);
    if opts.offline {
        return Err(EngineError::Hub {
            model_id: spec.to_string(),
            reason: format!("offline and not in the cache. {hint}"),
        });
    }
    download(&cache, spec).map_err(|reason| EngineError::Hub {
        model_id: spec.to_string(),
        reason: format!("{reason}. {hint}"),
    })
}

/// The snapshot directory if the cache holds config.json and every weight file.
fn cached_snapshot(cache: &Cache, id: &str) -> Option<PathBuf> {
    let repo = cache.repo(Repo::model(id.to_string()));
    let config = repo.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    match crate::weights::find_weights(&dir) {
        Ok(_) => Some(dir),
        Err(_) => None,
    }
}

fn offline_hint(cache: &Cache, id: &str) -> String {
    let folder = Repo::model(id.to_string()).folder_name();
    format!(
        "Either run `huggingface-cli download {id}` on a machine with network and copy {}/{folder} into the same place here \
         (or set HF_HOME), or put config.json, tokenizer.json, preprocessor_config.json and model*.safetensors \
         (+ {INDEX_FILE}) in a directory and pass --model DIR",
        cache.path().display()
    )
}

fn download(cache: &Cache, id: &str) -> Result<PathBuf, String> {
    let api = ApiBuilder::from_cache(cache.clone())
        .build()
        .map_err(|e| format!("cannot start the hub client: {e}"))?;
    let repo = api.model(id.to_string());
    let mut config = None;
    for name in REQUIRED {
        config = Some(
            repo.get(name)
                .map_err(|e| format!("cannot download {name}: {e}"))?,
        );
    }
    for name in OPTIONAL {
        // Optional files: absence is fine, the loader reports what it needs.
        let _ = repo.get(name);
    }
    match repo.get(INDEX_FILE) {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| format!("cannot read {}: {e}", index.display()))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{INDEX_FILE}: {e}"))?;
            let mut shards: Vec<String> = value["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                repo.get(&shard)
                    .map_err(|e| format!("cannot download {shard}: {e}"))?;
            }
        }
        Err(_) => {
            repo.get(SINGLE_FILE)
                .map_err(|e| format!("cannot download {SINGLE_FILE} or {INDEX_FILE}: {e}"))?;
        }
    }
    let config = config.ok_or("no config.json")?;
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "bad cache path".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths_are_told_apart() {
        assert!(looks_like_repo_id("Qwen/Qwen2.5-VL-7B-Instruct"));
        assert!(!looks_like_repo_id("./models/qwen"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("justaname"));
        assert!(!looks_like_repo_id("../x"));
    }
}
