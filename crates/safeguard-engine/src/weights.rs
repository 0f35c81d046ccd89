//! Loading a Qwen2.5-VL checkpoint directory (Hugging Face layout) into a
//! [`Qwen2_5VlModel`]: `config.json`, memory-mapped safetensors (one file or shards listed in
//! `model.safetensors.index.json`), the dtype chosen at load time, and an optional PEFT LoRA
//! adapter merged into the weights.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use safeguard_model::lora::{LoraAdapter, LoraConfig, MergedLoraBackend};
use safeguard_model::qwen2_5_vl::{Config, ModelConfig, Qwen2_5VlModel, WeightLayout};

use crate::EngineError;

/// Name of the single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors files of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    /// `model.safetensors`.
    Single(PathBuf),
    /// `model.safetensors.index.json` and the distinct shards it names, sorted.
    Sharded {
        /// The index file.
        index: PathBuf,
        /// The shard files.
        shards: Vec<PathBuf>,
        /// Tensor name → shard file name, as listed in the index.
        weight_map: HashMap<String, String>,
    },
}

impl WeightFiles {
    /// Every file to map.
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            Self::Single(p) => vec![p.clone()],
            Self::Sharded { shards, .. } => shards.clone(),
        }
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

/// Finds the weights of `dir`: the shard index if present (every shard must exist), else
/// `model.safetensors`.
pub fn find_weights(dir: &Path) -> Result<WeightFiles, EngineError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = read_to_string(&index)?;
        let parsed: Index = serde_json::from_str(&text).map_err(|source| EngineError::Json {
            path: index.clone(),
            source,
        })?;
        let names: BTreeSet<&String> = parsed.weight_map.values().collect();
        if names.is_empty() {
            return Err(EngineError::Index {
                path: index,
                reason: "weight_map is empty".into(),
            });
        }
        let mut shards = Vec::new();
        for name in names {
            let shard = dir.join(name);
            if !shard.is_file() {
                return Err(EngineError::MissingFile {
                    path: shard,
                    hint: format!(
                        "shard listed in {}; download every shard of the checkpoint",
                        index.display()
                    ),
                });
            }
            shards.push(shard);
        }
        return Ok(WeightFiles::Sharded {
            index,
            shards,
            weight_map: parsed.weight_map,
        });
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(WeightFiles::Single(single));
    }
    Err(EngineError::MissingFile {
        path: single,
        hint: format!(
            "{} holds neither {SINGLE_FILE} nor {INDEX_FILE} with its shards (Hugging Face layout)",
            dir.display()
        ),
    })
}

/// Parses a dtype name: `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_dtype(name: &str) -> Result<DType, EngineError> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(EngineError::Input {
            reason: format!("unknown dtype `{other}`: use f32, bf16 or f16"),
        }),
    }
}

/// Reads and parses `dir/config.json`.
pub fn load_config(dir: &Path) -> Result<Config, EngineError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(EngineError::MissingFile {
            path,
            hint: "a Qwen2.5-VL model directory needs config.json (Hugging Face layout)".into(),
        });
    }
    let text = read_to_string(&path)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| EngineError::Json {
            path: path.clone(),
            source,
        })?;
    let parsed: ModelConfig =
        serde_json::from_value(value).map_err(|source| EngineError::Json {
            path: path.clone(),
            source,
        })?;
    match parsed {
        ModelConfig::Qwen2_5Vl(cfg) => Ok(cfg),
        other => Err(EngineError::Input {
            reason: format!("{}: unsupported model {other:?}", path.display()),
        }),
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight and activation dtype (f32, bf16 or f16); checkpoint tensors are converted.
    pub dtype: DType,
    /// Where to run.
    pub device: Device,
    /// A PEFT adapter directory to apply.
    pub lora: Option<PathBuf>,
    /// How to apply `lora`.
    pub lora_mode: LoraMode,
}

/// How a LoRA adapter is applied at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraMode {
    /// Added into the weights as they are loaded (inference: no extra cost).
    #[default]
    Merged,
    /// Kept as separate `A`/`B` matrices next to the weights (training, adapter switching).
    Separate,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            lora: None,
            lora_mode: LoraMode::Merged,
        }
    }
}

/// A model loaded from a directory.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model.
    pub model: Qwen2_5VlModel,
    /// Its configuration.
    pub config: Config,
    /// The tensor naming found in the checkpoint.
    pub layout: WeightLayout,
    /// The directory it came from.
    pub dir: PathBuf,
}

/// Loads `dir` (config, memory-mapped weights, optional merged LoRA).
///
/// A missing or mis-shaped tensor fails with an error naming it.
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel, EngineError> {
    load_model_with(dir, opts, |backend, _| backend)
}

/// [`load_model`] with the weight source wrapped by `wrap`, which gets the checkpoint's backend
/// (after any merged LoRA) and layout and returns the backend the model is built from
/// (training wraps the weights it trains into `Var`s this way).
pub fn load_model_with(
    dir: &Path,
    opts: &LoadOptions,
    wrap: impl FnOnce(Box<dyn SimpleBackend>, WeightLayout) -> Box<dyn SimpleBackend>,
) -> Result<LoadedModel, EngineError> {
    let config = load_config(dir)?;
    let files = find_weights(dir)?;
    // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on them not
    // being modified while the model is alive.
    let weights = unsafe { PerTensorMmap::new(&files.paths())? };
    let st = &weights.all;
    if let WeightFiles::Sharded {
        index, weight_map, ..
    } = &files
    {
        let mut names: Vec<&String> = weight_map.keys().collect();
        names.sort_unstable();
        if let Some(missing) = names.into_iter().find(|n| st.get(n).is_err()) {
            return Err(EngineError::Index {
                path: index.clone(),
                reason: format!(
                    "lists tensor `{missing}` in `{}`, which does not hold it",
                    weight_map[missing]
                ),
            });
        }
    }
    let layout = WeightLayout::detect(|n| st.get(n).is_ok()).ok_or_else(|| EngineError::Index {
        path: files.paths()[0].clone(),
        reason: "no token embedding (`model.embed_tokens.weight` or `model.language_model.embed_tokens.weight`): not a Qwen2.5-VL checkpoint".into(),
    })?;
    tracing::info!(dir = %dir.display(), ?layout, config_layout = ?config.layout, dtype = ?opts.dtype, "loading Qwen2.5-VL");
    let adapter = opts
        .lora
        .as_deref()
        .map(|d| load_lora(d, layout))
        .transpose()?;
    let mut backend: Box<dyn SimpleBackend> = Box::new(weights);
    if let (Some(adapter), LoraMode::Merged) = (&adapter, opts.lora_mode) {
        backend = Box::new(MergedLoraBackend::new(backend, adapter.clone())?);
    }
    let backend = wrap(backend, layout);
    let vb = VarBuilder::from_backend(backend, opts.dtype, opts.device.clone());
    let mut model = Qwen2_5VlModel::new(&config, layout, vb)?;
    if let (Some(adapter), LoraMode::Separate) = (&adapter, opts.lora_mode) {
        let layers = model.attach_lora(adapter)?;
        tracing::info!(layers, "LoRA adapter attached unmerged");
    }
    Ok(LoadedModel {
        model,
        config,
        layout,
        dir: dir.to_path_buf(),
    })
}

/// Memory-mapped safetensors that map a file afresh for each tensor read and unmap it once the
/// tensor has been copied out.
///
/// candle copies every tensor from the map into its own buffer (also when the dtype does not
/// change). With one long-lived map, the pages a load touches stay in the process's resident
/// set until the map is dropped, so a load on a machine with free memory peaks at twice the
/// weights (heap copy + mapped file pages; measured in `docs/model.md`, "Memory"). Mapping per
/// tensor releases those pages tensor by tensor; they remain in the page cache, reclaimable.
struct PerTensorMmap {
    /// Every file mapped once, for tensor lookups and candle's not-found errors; only the
    /// header pages of this map are ever read.
    all: MmapedSafetensors,
    /// Tensor name → the file holding it (the last file, when several hold a name, as in
    /// [`MmapedSafetensors::multi`]).
    routing: HashMap<String, PathBuf>,
}

impl PerTensorMmap {
    /// Maps `paths` and reads their headers.
    ///
    /// # Safety
    /// As for [`MmapedSafetensors::multi`]: the files must not be modified while mapped.
    unsafe fn new(paths: &[PathBuf]) -> candle_core::Result<Self> {
        let all = MmapedSafetensors::multi(paths)?;
        let mut routing = HashMap::new();
        for path in paths {
            let one = MmapedSafetensors::new(path)?;
            for (name, _) in one.tensors() {
                routing.insert(name, path.clone());
            }
        }
        Ok(Self { all, routing })
    }

    /// Runs `f` on a fresh map of the file holding `name` (on `all` when no file does, which
    /// gives candle's error naming the tensor); the map is dropped when `f` returns.
    fn with_file<T>(
        &self,
        name: &str,
        f: impl FnOnce(&MmapedSafetensors) -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        match self.routing.get(name) {
            // SAFETY: a file already mapped by `new`, under the same contract.
            Some(path) => f(&unsafe { MmapedSafetensors::new(path)? }),
            None => f(&self.all),
        }
    }
}

impl SimpleBackend for PerTensorMmap {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.with_file(name, |st| SimpleBackend::get(st, s, name, h, dtype, dev))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.with_file(name, |st| st.get_unchecked(name, dtype, dev))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }
}

/// Reads a PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`) and
/// names its tensors as in a checkpoint of `layout`.
pub fn load_lora(dir: &Path, layout: WeightLayout) -> Result<LoraAdapter, EngineError> {
    let cfg_path = dir.join("adapter_config.json");
    let weights = dir.join("adapter_model.safetensors");
    for path in [&cfg_path, &weights] {
        if !path.is_file() {
            return Err(EngineError::MissingFile {
                path: path.clone(),
                hint: "a PEFT LoRA adapter directory needs adapter_config.json and adapter_model.safetensors".into(),
            });
        }
    }
    let cfg = LoraConfig::from_json_str(&read_to_string(&cfg_path)?)?;
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    Ok(LoraAdapter::new(&cfg, tensors, layout)?)
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, EngineError> {
    std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Resident KiB of this process's mappings of `path` (from `/proc/self/smaps`).
    fn mapped_rss_kib(path: &Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let name = path.to_str().unwrap();
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                if inside {
                    kib += rss
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap();
                }
            } else if line.split_whitespace().count() >= 5
                && line
                    .split_whitespace()
                    .next()
                    .is_some_and(|r| r.contains('-'))
            {
                inside = line.ends_with(name);
            }
        }
        kib
    }

    #[test]
    fn per_tensor_maps_load_the_right_data_and_leave_no_file_pages_resident() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let n = 1 << 20; // 4 MiB per f32 tensor
        let a = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
        let b = (a.clone() * -2.0).unwrap();
        let tensors = HashMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        // SAFETY: a private temporary file, not modified while mapped.
        let backend = unsafe { PerTensorMmap::new(std::slice::from_ref(&path)) }.unwrap();
        assert!(backend.contains_tensor("a") && !backend.contains_tensor("c"));
        let init = candle_nn::Init::Const(0.);
        for (name, want) in [("a", &a), ("b", &b)] {
            let got = backend
                .get(n.into(), name, init, DType::F32, &Device::Cpu)
                .unwrap();
            let diff = (got - want).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
        let err = backend
            .get(n.into(), "c", init, DType::F32, &Device::Cpu)
            .unwrap_err();
        assert!(err.to_string().contains('c'), "{err}");
        // 8 MiB of tensor data were read; one long-lived map would keep them resident.
        let kib = mapped_rss_kib(&path);
        assert!(kib < 1024, "{kib} KiB of the file still resident");
    }
}
