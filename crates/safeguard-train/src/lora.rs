//! Trainable LoRA adapters in PEFT's format.
//!
//! A [`TrainableLora`] holds one `(A, B)` pair of f32 `Var`s per targeted projection, named by
//! the keys PEFT writes (`base_model.model.<module>.lora_{A,B}.weight`), and attaches them to a
//! [`Qwen2_5VlModel`] unmerged: the model's LoRA layers then hold tensors that share the
//! `Var`s' storage, so an optimizer step (`Var::set`) changes what the model computes without
//! re-attaching.
//!
//! - [`TrainableLora::init`]: PEFT's initialisation (A Kaiming-uniform with bound `1/√in`,
//!   i.e. `kaiming_uniform_(a=√5)`, B zero), from a seed; targets by module name (the last path
//!   segment, as PEFT's list form), the vision tower excluded unless asked for.
//! - [`TrainableLora::load`]: an adapter directory PEFT (or we) wrote; its key names are kept
//!   and written back unchanged.
//! - [`TrainableLora::save`]: `adapter_config.json` with the keys PEFT writes (and
//!   `exclude_modules` for the vision tower), `adapter_model.safetensors` with
//!   `{"format": "pt"}` metadata, names in either transformers layout ([`WeightLayout`]:
//!   `Nested` = transformers ≥ 4.52 module names, `Legacy` = older).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safeguard_model::lora::{to_layout, LoraAdapter, LoraConfig, TargetModules};
use safeguard_model::qwen2_5_vl::{Qwen2_5VlModel, WeightLayout};
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, TrainError};

/// The projections a new adapter may target.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Vision-tower projections (`qkv`, `proj`, and the MLP's, which share names with the
/// decoder's: hence `exclude_modules`).
pub const VISION_PROJECTIONS: [&str; 5] = ["qkv", "proj", "gate_proj", "up_proj", "down_proj"];

/// The PEFT release whose files we write (and test against: `scripts/fixtures/train_reference.py`).
pub const PEFT_FORMAT_VERSION: &str = "0.21.2";

/// The regex PEFT gets as `exclude_modules` for an adapter without vision-tower pairs.
pub const EXCLUDE_VISION: &str = ".*visual.*";

/// LoRA hyper-parameters of a new adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank.
    pub r: usize,
    /// Scaling numerator (`scale = alpha / r`, or `alpha / √r` with `use_rslora`).
    pub alpha: f64,
    /// Dropout on the LoRA branch's input during training (0 = none).
    #[serde(default)]
    pub dropout: f64,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// Module names to adapt (a subset of q/k/v/o_proj, gate/up/down_proj; in the vision
    /// tower also qkv and proj).
    pub target_modules: Vec<String>,
    /// Also adapt the vision tower's projections of those names (off by default).
    #[serde(default)]
    pub vision: bool,
}

impl LoraSpec {
    /// Checks the values, naming the bad key.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(TrainError::Config { reason });
        if self.r == 0 {
            return bad("lora.r must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("lora.alpha must be positive, not {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "lora.dropout must be in [0, 1), not {}",
                self.dropout
            ));
        }
        if self.target_modules.is_empty() {
            return bad("lora.target_modules is empty".into());
        }
        for m in &self.target_modules {
            let known = PROJECTIONS.contains(&m.as_str())
                || (self.vision && VISION_PROJECTIONS.contains(&m.as_str()));
            if !known {
                return bad(format!(
                    "lora.target_modules: `{m}` is not a LoRA-capable projection (use {}{})",
                    PROJECTIONS.join(", "),
                    if self.vision { ", qkv, proj" } else { "" }
                ));
            }
        }
        Ok(())
    }

    /// The LoRA scale.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// One adapted projection.
#[derive(Debug, Clone)]
struct Pair {
    /// Checkpoint name of the base weight (`…q_proj.weight`, in the checkpoint's layout).
    weight: String,
    /// Adapter-file key of A (B's is the same with `lora_B`).
    key_a: String,
    key_b: String,
    a: Var,
    b: Var,
}

/// A LoRA adapter whose matrices are f32 `Var`s.
#[derive(Debug, Clone)]
pub struct TrainableLora {
    spec: LoraSpec,
    pairs: Vec<Pair>,
    /// Keys of a loaded `adapter_config.json` that are kept when it is written back.
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The PEFT key of `which` (`"lora_A"`/`"lora_B"`) for checkpoint weight `weight`, module
/// names as in transformers of `layout`.
pub fn peft_key(weight: &str, which: &str, layout: WeightLayout) -> String {
    let module = weight.strip_suffix(".weight").unwrap_or(weight);
    format!(
        "base_model.model.{}.{which}.weight",
        to_layout(module, layout)
    )
}

/// The last segment of a module path (`…self_attn.q_proj.weight` → `q_proj`).
fn module_kind(weight: &str) -> &str {
    let module = weight.strip_suffix(".weight").unwrap_or(weight);
    module.rsplit('.').next().unwrap_or(module)
}

/// Hash of `(seed, tag, index)` for per-tensor random streams.
pub fn stream_seed(seed: u64, tag: &str, index: u64) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(tag.as_bytes());
    h.update(index.to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

impl TrainableLora {
    /// A new adapter for every projection of `model` that `spec` targets, initialised as PEFT
    /// does from `seed` (pair `i` draws A from its own stream). Names are written in `keys`
    /// layout. Fails if nothing matches.
    pub fn init(
        model: &mut Qwen2_5VlModel,
        spec: &LoraSpec,
        keys: WeightLayout,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        spec.validate()?;
        let mut pairs = Vec::new();
        for (weight, [out_dim, in_dim], vision) in model.projections() {
            if vision && !spec.vision {
                continue;
            }
            if !spec
                .target_modules
                .iter()
                .any(|m| m == module_kind(&weight))
            {
                continue;
            }
            let mut rng =
                ChaCha8Rng::seed_from_u64(stream_seed(seed, &format!("lora_A:{weight}"), 0));
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> = (0..spec.r * in_dim)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (spec.r, in_dim), device)?)?;
            let b = Var::zeros((out_dim, spec.r), DType::F32, device)?;
            pairs.push(Pair {
                key_a: peft_key(&weight, "lora_A", keys),
                key_b: peft_key(&weight, "lora_B", keys),
                weight,
                a,
                b,
            });
        }
        // One canonical order (by key, as a loaded adapter): the global gradient norm sums
        // in this order, so a resumed run adds in the same order as a straight one.
        pairs.sort_by(|x, y| x.key_a.cmp(&y.key_a));
        if pairs.is_empty() {
            return Err(TrainError::Config {
                reason: format!(
                    "lora.target_modules {:?} match no projection of the model",
                    spec.target_modules
                ),
            });
        }
        Ok(Self {
            spec: spec.clone(),
            pairs,
            extra: Default::default(),
        })
    }

    /// Loads an adapter directory (`adapter_config.json`, `adapter_model.safetensors`) as
    /// trainable f32 `Var`s on `device`; tensor names are resolved against a checkpoint of
    /// `layout` and the file's own key names are kept for saving.
    pub fn load(dir: &Path, layout: WeightLayout, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let cfg = LoraConfig::from_json_str(&text)?;
        let raw: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| TrainError::File {
                path: cfg_path.clone(),
                reason: e.to_string(),
            })?;
        let dropout = raw
            .get("lora_dropout")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        let target_modules = match &cfg.target_modules {
            TargetModules::List(l) => l.clone(),
            TargetModules::Regex(r) => vec![r.clone()],
        };
        let weights = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| {
            TrainError::File {
                path: weights.clone(),
                reason: e.to_string(),
            }
        })?;
        // Pair the keys up, as the inference loader does (it checks ranks and completeness).
        LoraAdapter::new(&cfg, tensors.clone(), layout)?;
        let mut by_module: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        for key in tensors.keys() {
            let rest = key.strip_prefix("base_model.model.").unwrap_or(key);
            if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                by_module.entry(m.to_string()).or_default().0 = Some(key.clone());
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                by_module.entry(m.to_string()).or_default().1 = Some(key.clone());
            }
        }
        let mut pairs = Vec::new();
        let mut vision = false;
        for (module, (ka, kb)) in by_module {
            let (Some(key_a), Some(key_b)) = (ka, kb) else {
                unreachable!("LoraAdapter::new checked that every module has both matrices")
            };
            let weight = format!("{}.weight", to_layout(&module, layout));
            vision |= module.contains("visual");
            let var = |k: &str| -> Result<Var> {
                Ok(Var::from_tensor(
                    &tensors[k].to_dtype(DType::F32)?.to_device(device)?,
                )?)
            };
            pairs.push(Pair {
                a: var(&key_a)?,
                b: var(&key_b)?,
                weight,
                key_a,
                key_b,
            });
        }
        let mut extra = raw;
        for k in ["r", "lora_alpha", "lora_dropout", "use_rslora", "peft_type"] {
            extra.remove(k);
        }
        // A list is rewritten from the spec; a regex string is kept as PEFT wrote it.
        if matches!(cfg.target_modules, TargetModules::List(_)) {
            extra.remove("target_modules");
        }
        Ok(Self {
            spec: LoraSpec {
                r: cfg.r,
                alpha: cfg.lora_alpha,
                dropout,
                use_rslora: cfg.use_rslora,
                target_modules,
                vision,
            },
            pairs,
            extra,
        })
    }

    /// A copy whose matrices are new `Var`s of `dtype` (f64 for finite-difference checks;
    /// training keeps f32).
    pub fn with_dtype(&self, dtype: DType) -> Result<Self> {
        let mut out = self.clone();
        for p in &mut out.pairs {
            p.a = Var::from_tensor(&p.a.as_tensor().to_dtype(dtype)?)?;
            p.b = Var::from_tensor(&p.b.as_tensor().to_dtype(dtype)?)?;
        }
        Ok(out)
    }

    /// Checks that this adapter has `spec`'s shape (r, alpha, rsLoRA, target modules) and takes
    /// its dropout; fails naming the first key that differs.
    pub fn conform_to(&mut self, spec: &LoraSpec) -> Result<()> {
        let mine = &self.spec;
        let mut a = mine.target_modules.clone();
        let mut b = spec.target_modules.clone();
        a.sort();
        b.sort();
        let differs = if mine.r != spec.r {
            Some(format!(
                "lora.r: {} in the adapter, {} in the config",
                mine.r, spec.r
            ))
        } else if mine.alpha != spec.alpha {
            Some(format!(
                "lora.alpha: {} in the adapter, {} in the config",
                mine.alpha, spec.alpha
            ))
        } else if mine.use_rslora != spec.use_rslora {
            Some(format!(
                "lora.use_rslora: {} in the adapter, {} in the config",
                mine.use_rslora, spec.use_rslora
            ))
        } else if a != b {
            Some(format!(
                "lora.target_modules: {a:?} in the adapter, {b:?} in the config"
            ))
        } else {
            None
        };
        if let Some(reason) = differs {
            return Err(TrainError::Config {
                reason: format!("train.init_adapter does not match [lora]: {reason}"),
            });
        }
        self.spec.dropout = spec.dropout;
        Ok(())
    }

    /// The hyper-parameters.
    pub fn spec(&self) -> &LoraSpec {
        &self.spec
    }

    /// Every matrix as a `Var`, in the order of [`TrainableLora::names`] (A then B per pair).
    pub fn vars(&self) -> Vec<Var> {
        self.pairs
            .iter()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect()
    }

    /// Adapter-file key of every matrix, in the order of [`TrainableLora::vars`].
    pub fn names(&self) -> Vec<String> {
        self.pairs
            .iter()
            .flat_map(|p| [p.key_a.clone(), p.key_b.clone()])
            .collect()
    }

    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The pairs as an inference adapter whose tensors share the `Var`s' storage.
    pub fn adapter(&self) -> LoraAdapter {
        let pairs: HashMap<String, (Tensor, Tensor)> = self
            .pairs
            .iter()
            .map(|p| {
                (
                    p.weight.clone(),
                    (p.a.as_tensor().clone(), p.b.as_tensor().clone()),
                )
            })
            .collect();
        LoraAdapter::from_pairs(pairs, self.spec.scale())
    }

    /// Attaches the pairs to `model` unmerged; returns the number of layers adapted.
    pub fn attach(&self, model: &mut Qwen2_5VlModel) -> Result<usize> {
        Ok(model.attach_lora(&self.adapter())?)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created).
    /// `base_model` goes into `base_model_name_or_path`.
    pub fn save(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let names = self.names();
        let tensors: Vec<(String, Tensor)> = names
            .into_iter()
            .zip(self.vars())
            .map(|(n, v)| Ok((n, v.as_tensor().to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<_>>()?;
        save_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
        let cfg = self.config_json(base_model);
        let path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&cfg).expect("JSON values serialise");
        std::fs::write(&path, text + "\n").map_err(io(&path))
    }

    /// The `adapter_config.json` PEFT writes for this adapter.
    pub fn config_json(&self, base_model: Option<&str>) -> serde_json::Value {
        let s = &self.spec;
        let mut targets = s.target_modules.clone();
        targets.sort();
        targets.dedup();
        let mut cfg = serde_json::Map::new();
        let defaults = serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": "none",
            "exclude_modules": if s.vision { serde_json::Value::Null } else { EXCLUDE_VISION.into() },
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_bias": false,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "peft_version": PEFT_FORMAT_VERSION,
            "rank_pattern": {},
            "revision": null,
            "task_type": null,
            "trainable_token_indices": null,
            "use_dora": false,
        });
        for (k, v) in defaults.as_object().expect("an object") {
            cfg.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.extra {
            cfg.insert(k.clone(), v.clone());
        }
        if base_model.is_some() {
            cfg.insert("base_model_name_or_path".into(), base_model.into());
        }
        cfg.insert("peft_type".into(), "LORA".into());
        cfg.insert("r".into(), s.r.into());
        // PEFT writes an int when alpha is one.
        let alpha = if s.alpha.fract() == 0.0 && s.alpha.abs() < 1e15 {
            serde_json::Value::from(s.alpha as i64)
        } else {
            serde_json::Value::from(s.alpha)
        };
        cfg.insert("lora_alpha".into(), alpha);
        cfg.insert("lora_dropout".into(), s.dropout.into());
        cfg.insert("use_rslora".into(), s.use_rslora.into());
        if !self.extra.contains_key("target_modules") {
            cfg.insert("target_modules".into(), targets.into());
        }
        serde_json::Value::Object(
            cfg.into_iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        )
    }
}

/// Writes `tensors` as safetensors with `{"format": "pt"}` metadata (what torch-side loaders
/// expect; transformers < 4.48.2 fails without it).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // Write to a temporary name and rename, so a killed run leaves no half-written file.
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(data, Some(meta), &tmp).map_err(|e| TrainError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// PEFT-style LoRA dropout with masks derived from `(seed, step, micro-batch, layer)`: the
/// same call gives the same mask however often it runs (per-layer recomputation) and a resumed
/// run draws the masks a straight run draws. Off until [`SeededDropout::set`] is called.
#[derive(Debug)]
pub struct SeededDropout {
    p: f64,
    at: std::sync::Mutex<Option<(u64, u64, u64)>>,
}

impl SeededDropout {
    /// Dropout with probability `p` (in `[0, 1)`).
    pub fn new(p: f64) -> Self {
        Self {
            p,
            at: std::sync::Mutex::new(None),
        }
    }

    /// Masks for micro-batch `micro` of step `step` under `seed` from now on; `None` turns
    /// dropout off (evaluation).
    pub fn set(&self, at: Option<(u64, u64, u64)>) {
        *self.at.lock().expect("not poisoned") = at;
    }
}

impl safeguard_model::lora::DropoutMask for SeededDropout {
    fn mask(
        &self,
        name: &str,
        shape: &candle_core::Shape,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some((seed, step, micro)) = *self.at.lock().expect("not poisoned") else {
            return Ok(None);
        };
        if self.p == 0.0 {
            return Ok(None);
        }
        let tag = format!("dropout:{name}:{step}:{micro}");
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, &tag, 0));
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let p = self.p as f32;
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect();
        Tensor::from_vec(values, shape.clone(), device)?
            .to_dtype(dtype)
            .map(Some)
    }
}
