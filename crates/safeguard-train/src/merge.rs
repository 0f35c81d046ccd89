//! `safeguard train merge`: a LoRA adapter added into its base checkpoint, written as a new
//! checkpoint directory that transformers, vLLM and SafeGuard load without PEFT.
//!
//! Each targeted weight becomes `W + scale·B·A` (computed in f32, stored in the weight's own
//! dtype unless another is asked for); every other tensor is copied. Tensors are read and
//! written one at a time (the writer pulls each from the memory-mapped checkpoint as it
//! goes), so a 7B merge needs about one weight's memory beyond the page cache. The output is
//! one `model.safetensors` with `{"format": "pt"}` metadata and the checkpoint's tensor names,
//! next to copies of the base directory's other files (config, tokenizer, processor and
//! generation configs, chat template).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use safeguard_engine::weights::load_lora;
use safeguard_model::lora::LoraAdapter;
use safeguard_model::qwen2_5_vl::WeightLayout;

use crate::error::{io, Result, TrainError};

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Of which had an adapter pair added.
    pub merged: usize,
    /// The weights file.
    pub weights: PathBuf,
    /// Other files copied from the base directory.
    pub copied: Vec<String>,
}

/// One output tensor, produced when the writer asks for its bytes: a replacement, or the
/// source tensor plus the adapter's delta if it has one.
struct Lazy<'a> {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    source: &'a MmapedSafetensors,
    adapter: Option<&'a LoraAdapter>,
    replacement: Option<&'a Tensor>,
    error: &'a std::sync::Mutex<Option<String>>,
}

impl Lazy<'_> {
    fn compute(&self) -> candle_core::Result<Tensor> {
        if let Some(t) = self.replacement {
            return t
                .to_device(&Device::Cpu)?
                .to_dtype(self.dtype)?
                .contiguous();
        }
        let base = self.source.load(&self.name, &Device::Cpu)?;
        let delta = match self.adapter {
            Some(a) => a.delta(&self.name, &Device::Cpu)?,
            None => None,
        };
        match delta {
            None => base.to_dtype(self.dtype),
            Some(delta) => {
                if delta.dims() != base.dims() {
                    candle_core::bail!(
                        "the adapter's delta for {} is {:?} but the weight is {:?}",
                        self.name,
                        delta.dims(),
                        base.dims()
                    );
                }
                (base.to_dtype(DType::F32)? + delta)?.to_dtype(self.dtype)
            }
        }
    }
}

impl safetensors::View for Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F64 => safetensors::Dtype::F64,
            other => unreachable!("open_checkpoint admits float tensors only, not {other:?}"),
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.compute() {
            Ok(t) => Cow::Owned(safetensors::View::data(&t).into_owned()),
            Err(e) => {
                // The writer cannot fail from here: record it, write zeros, and fail after.
                let mut slot = self.error.lock().expect("not poisoned");
                slot.get_or_insert_with(|| format!("{}: {e}", self.name));
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// A checkpoint tensor's name, shape and dtype.
type TensorInfo = (String, Vec<usize>, DType);

/// The checkpoint's tensors (sorted by name) and its memory-mapped files.
fn open_checkpoint(model_dir: &Path) -> Result<(MmapedSafetensors, Vec<TensorInfo>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(model_dir)
        .map_err(io(model_dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TrainError::File {
            path: model_dir.to_path_buf(),
            reason: "no *.safetensors weights".into(),
        });
    }
    // SAFETY: read-only maps of files nobody writes while we read them.
    let source = unsafe { MmapedSafetensors::multi(&files)? };
    let mut names = Vec::new();
    for (name, view) in source.tensors() {
        let dt = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            other => {
                return Err(TrainError::File {
                    path: model_dir.to_path_buf(),
                    reason: format!(
                        "tensor `{name}` is {other:?}: only float checkpoints are handled"
                    ),
                })
            }
        };
        names.push((name, view.shape().to_vec(), dt));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((source, names))
}

/// Writes a checkpoint directory `out`: every tensor of `model_dir`'s checkpoint under its
/// name (with the adapter's delta added, or replaced by `replacements[name]`), floating
/// tensors in `dtype` if given, plus copies of the other files. Returns the tensors written
/// and the files copied.
fn write_checkpoint(
    model_dir: &Path,
    out: &Path,
    adapter: Option<&LoraAdapter>,
    replacements: &HashMap<String, Tensor>,
    dtype: Option<DType>,
) -> Result<(usize, PathBuf, Vec<String>)> {
    let (source, names) = open_checkpoint(model_dir)?;
    let mut unknown: Vec<&String> = replacements
        .keys()
        .filter(|k| !names.iter().any(|(n, _, _)| n == *k))
        .collect();
    unknown.sort();
    if let Some(first) = unknown.first() {
        return Err(TrainError::File {
            path: model_dir.to_path_buf(),
            reason: format!("holds no tensor `{first}` to replace"),
        });
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let error = std::sync::Mutex::new(None);
    let views: Vec<(String, Lazy<'_>)> = names
        .iter()
        .map(|(name, shape, dt)| {
            // Every tensor is a float one (open_checkpoint); a replacement keeps its own
            // dtype (trained f32 weights stay exact).
            let own = replacements.get(name).map_or(*dt, Tensor::dtype);
            (
                name.clone(),
                Lazy {
                    name: name.clone(),
                    shape: shape.clone(),
                    dtype: dtype.unwrap_or(own),
                    source: &source,
                    adapter,
                    replacement: replacements.get(name),
                    error: &error,
                },
            )
        })
        .collect();
    let weights = out.join("model.safetensors");
    let tmp = out.join("model.safetensors.tmp");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| TrainError::File {
        path: weights.clone(),
        reason: e.to_string(),
    })?;
    if let Some(e) = error.into_inner().expect("not poisoned") {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::File {
            path: weights,
            reason: e,
        });
    }
    std::fs::rename(&tmp, &weights).map_err(io(&weights))?;
    let mut copied = Vec::new();
    for entry in std::fs::read_dir(model_dir)
        .map_err(io(model_dir))?
        .flatten()
    {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights_file = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if path.is_file() && !weights_file {
            std::fs::copy(&path, out.join(&name)).map_err(io(&path))?;
            copied.push(name);
        }
    }
    copied.sort();
    if let Some(dt) = dtype {
        set_config_dtype(&out.join("config.json"), dt)?;
    }
    Ok((names.len(), weights, copied))
}

/// Writes `model_dir`'s checkpoint to `out` with the tensors of `replacements` (by checkpoint
/// name: a fully fine-tuned model) in place of the originals; every name must exist there.
pub fn save_replaced(
    model_dir: &Path,
    out: &Path,
    replacements: &HashMap<String, Tensor>,
    dtype: Option<DType>,
) -> Result<()> {
    write_checkpoint(model_dir, out, None, replacements, dtype).map(|_| ())
}

/// Merges the adapter in `adapter_dir` into the checkpoint in `model_dir` and writes the result
/// to `out` (created; must not hold a checkpoint already). `dtype` converts every floating
/// tensor (default: keep each tensor's).
pub fn merge_adapter(
    model_dir: &Path,
    adapter_dir: &Path,
    out: &Path,
    dtype: Option<DType>,
) -> Result<MergeSummary> {
    if out.join("model.safetensors").exists() || out.join("config.json").exists() {
        return Err(TrainError::Config {
            reason: format!(
                "{} already holds a checkpoint: choose an empty --out",
                out.display()
            ),
        });
    }
    let (_, names) = open_checkpoint(model_dir)?;
    let has = |n: &str| names.iter().any(|(m, _, _)| m == n);
    let layout = WeightLayout::detect(has).ok_or_else(|| TrainError::File {
        path: model_dir.to_path_buf(),
        reason: "not a Qwen2.5-VL checkpoint (no token embedding)".into(),
    })?;
    let adapter = load_lora(adapter_dir, layout)?;
    let mut missing: Vec<&str> = adapter.targets().filter(|t| !has(t)).collect();
    missing.sort_unstable();
    if let Some(first) = missing.first() {
        return Err(TrainError::Config {
            reason: format!(
                "the adapter targets `{first}`, which {} does not hold: another base model?",
                model_dir.display()
            ),
        });
    }
    let merged = names
        .iter()
        .filter(|(n, _, _)| adapter.targets().any(|t| t == n))
        .count();
    let (tensors, weights, copied) =
        write_checkpoint(model_dir, out, Some(&adapter), &HashMap::new(), dtype)?;
    Ok(MergeSummary {
        tensors,
        merged,
        weights,
        copied,
    })
}

/// Rewrites the dtype keys of a copied `config.json` (`torch_dtype`, transformers 5's `dtype`,
/// also inside `text_config` / `vision_config`) to `dtype`.
fn set_config_dtype(path: &Path, dtype: DType) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    fn set(v: &mut serde_json::Value, name: &str) {
        if let Some(obj) = v.as_object_mut() {
            for key in ["torch_dtype", "dtype"] {
                if obj.contains_key(key) {
                    obj.insert(key.into(), name.into());
                }
            }
            for sub in ["text_config", "vision_config"] {
                if let Some(s) = obj.get_mut(sub) {
                    set(s, name);
                }
            }
        }
    }
    set(&mut cfg, name);
    if cfg.get("torch_dtype").is_none() && cfg.get("dtype").is_none() {
        cfg["torch_dtype"] = name.into();
    }
    let text = serde_json::to_string_pretty(&cfg).expect("JSON serialises") + "\n";
    std::fs::write(path, text).map_err(io(path))
}
