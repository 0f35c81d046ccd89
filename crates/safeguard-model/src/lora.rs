//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`).
//!
//! A LoRA adapter adds `scale · B·A` to the weight `W` `[out, in]` of each targeted linear layer,
//! with `A` `[r, in]`, `B` `[out, r]` and `scale = lora_alpha / r` (`lora_alpha / √r` with
//! `use_rslora`). PEFT stores them as `base_model.model.<module>.lora_A.weight` /
//! `.lora_B.weight`, where `<module>` is the transformers module path (either
//! [`WeightLayout`]: the names are translated to the checkpoint's).
//!
//! Two ways to apply one:
//! - **merged** ([`MergedLoraBackend`]): a `VarBuilder` backend that adds the delta to each
//!   targeted weight as it is loaded (in f32, then cast to the load dtype); the model code does
//!   not change and inference costs nothing extra;
//! - **separate** ([`LoraLinear`], attached with
//!   [`crate::qwen2_5_vl::Qwen2_5VlModel::attach_lora`]): every projection of the vision blocks
//!   and decoder layers keeps `W`, `A` and `B` apart and computes `x·Wᵀ + scale·(x·Aᵀ)·Bᵀ`, which
//!   is what training needs (`A`/`B` may be `Var`-backed tensors). The merger and `lm_head` are
//!   plain layers: an adapter targeting them is rejected. With `Var`-backed pairs the layers
//!   take their differentiable paths (see [`crate::layers`]); `safeguard-train` trains them.
//!
//! DoRA, `lora_bias`, `fan_in_fan_out`, `rank_pattern`/`alpha_pattern` and `modules_to_save` are
//! rejected with a clear error rather than silently ignored.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, Linear, VarBuilder};
use serde::Deserialize;

use crate::qwen2_5_vl::WeightLayout;
use crate::ModelError;

/// The fields of `adapter_config.json` this crate reads (PEFT `LoraConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scaling numerator.
    pub lora_alpha: f64,
    /// Module names (suffix match on the last path segment) or one regex string (unsupported).
    pub target_modules: TargetModules,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (unsupported).
    #[serde(default)]
    pub use_dora: bool,
    /// Transposed base weights (unsupported).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Bias training mode: only `"none"` is supported.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Per-module ranks (must be empty).
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    /// Per-module alphas (must be empty).
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
    /// Fully trained extra modules (must be empty).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

/// `target_modules`: a list of names or a regex.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names such as `q_proj`.
    List(Vec<String>),
    /// A regular expression over full module paths.
    Regex(String),
}

fn default_bias() -> String {
    "none".to_string()
}

impl LoraConfig {
    /// Parses `adapter_config.json` and rejects options this crate does not implement.
    pub fn from_json_str(json: &str) -> Result<Self, ModelError> {
        let cfg: Self = serde_json::from_str(json).map_err(ModelError::ConfigJson)?;
        let unsupported = |what: &str| {
            Err(ModelError::Lora {
                reason: format!("{what} is not supported"),
            })
        };
        if cfg.use_dora {
            return unsupported("use_dora = true");
        }
        if cfg.fan_in_fan_out {
            return unsupported("fan_in_fan_out = true");
        }
        if cfg.bias != "none" {
            return unsupported(&format!("bias = {:?}", cfg.bias));
        }
        if !cfg.rank_pattern.is_empty() || !cfg.alpha_pattern.is_empty() {
            return unsupported("rank_pattern/alpha_pattern");
        }
        if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("modules_to_save");
        }
        if cfg.r == 0 {
            return unsupported("r = 0");
        }
        Ok(cfg)
    }

    /// `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// The `A`/`B` pairs of an adapter, keyed by the checkpoint name of the weight they modify
/// (`…q_proj.weight`).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pairs: HashMap<String, (Tensor, Tensor)>,
    scale: f64,
}

/// Translates a transformers module path (either transformers naming: `model.layers.N…` /
/// `visual.…` before 4.52, `model.language_model.layers.N…` / `model.visual.…` since) to the
/// tensor naming of `layout`. Legacy checkpoint names are the old module paths, so this also
/// turns a checkpoint name (without `.weight`) into the module path PEFT would use under
/// either transformers version.
pub fn to_layout(module: &str, layout: WeightLayout) -> String {
    let nested = if let Some(rest) = module.strip_prefix("visual.") {
        format!("model.visual.{rest}")
    } else if module.starts_with("model.visual.") || module.starts_with("model.language_model.") {
        module.to_string()
    } else if let Some(rest) = module.strip_prefix("model.") {
        format!("model.language_model.{rest}")
    } else {
        module.to_string()
    };
    match layout {
        WeightLayout::Nested => nested,
        WeightLayout::Legacy => {
            if let Some(rest) = nested.strip_prefix("model.visual.") {
                format!("visual.{rest}")
            } else if let Some(rest) = nested.strip_prefix("model.language_model.") {
                format!("model.{rest}")
            } else {
                nested
            }
        }
    }
}

impl LoraAdapter {
    /// Pairs up the `lora_A`/`lora_B` tensors of `adapter_model.safetensors` and names them as
    /// in a checkpoint of `layout`. Every module must have both matrices, of rank `cfg.r`.
    pub fn new(
        cfg: &LoraConfig,
        tensors: HashMap<String, Tensor>,
        layout: WeightLayout,
    ) -> Result<Self, ModelError> {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for (name, t) in tensors {
            let bad = || ModelError::Lora {
                reason: format!("unexpected tensor `{name}` in the adapter"),
            };
            let rest = name.strip_prefix("base_model.model.").ok_or_else(bad)?;
            let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, &mut a)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, &mut b)
            } else {
                return Err(bad());
            };
            which.insert(format!("{}.weight", to_layout(module, layout)), t);
        }
        let mut pairs = HashMap::new();
        for (name, ta) in a {
            let tb = b.remove(&name).ok_or_else(|| ModelError::Lora {
                reason: format!("`{name}` has lora_A but no lora_B"),
            })?;
            let (r_a, r_b) = (ta.dim(0)?, tb.dim(1)?);
            if r_a != cfg.r || r_b != cfg.r {
                return Err(ModelError::Lora {
                    reason: format!(
                        "`{name}`: lora_A rows {r_a} / lora_B columns {r_b} differ from r = {}",
                        cfg.r
                    ),
                });
            }
            pairs.insert(name, (ta, tb));
        }
        if let Some(name) = b.keys().next() {
            return Err(ModelError::Lora {
                reason: format!("`{name}` has lora_B but no lora_A"),
            });
        }
        Ok(Self {
            pairs,
            scale: cfg.scale(),
        })
    }

    /// An adapter from `(A, B)` pairs already keyed by checkpoint weight name (e.g. the
    /// `Var`-backed tensors of a trainable adapter) and one scale.
    pub fn from_pairs(pairs: HashMap<String, (Tensor, Tensor)>, scale: f64) -> Self {
        Self { pairs, scale }
    }

    /// Checkpoint names of the weights this adapter modifies.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.pairs.keys().map(String::as_str)
    }

    /// `scale · B·A` in f32 for weight `name`, if targeted.
    pub fn delta(&self, name: &str, device: &Device) -> candle_core::Result<Option<Tensor>> {
        let Some((a, b)) = self.pairs.get(name) else {
            return Ok(None);
        };
        let a = a.to_device(device)?.to_dtype(DType::F32)?;
        let b = b.to_device(device)?.to_dtype(DType::F32)?;
        Ok(Some((b.matmul(&a)? * self.scale)?))
    }
}

/// A `VarBuilder` backend that merges an adapter into the weights it serves.
pub struct MergedLoraBackend {
    inner: Box<dyn SimpleBackend>,
    adapter: LoraAdapter,
}

impl MergedLoraBackend {
    /// Wraps `inner`; fails naming the first adapter target that `inner` does not hold.
    pub fn new(inner: Box<dyn SimpleBackend>, adapter: LoraAdapter) -> Result<Self, ModelError> {
        let mut targets: Vec<&str> = adapter.targets().collect();
        targets.sort_unstable();
        if let Some(missing) = targets.into_iter().find(|t| !inner.contains_tensor(t)) {
            return Err(ModelError::Lora {
                reason: format!("targets `{missing}`, which the checkpoint does not have"),
            });
        }
        Ok(Self { inner, adapter })
    }
}

impl SimpleBackend for MergedLoraBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.adapter.delta(name, dev)? {
            None => self.inner.get(s, name, h, dtype, dev),
            Some(delta) => {
                let base = self.inner.get(s, name, h, DType::F32, dev)?;
                if base.shape() != delta.shape() {
                    candle_core::bail!(
                        "LoRA delta for {name} is {:?} but the weight is {:?}",
                        delta.shape(),
                        base.shape()
                    );
                }
                (base + delta)?.to_dtype(dtype)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.adapter.delta(name, dev)? {
            None => self.inner.get_unchecked(name, dtype, dev),
            Some(delta) => {
                (self.inner.get_unchecked(name, DType::F32, dev)? + delta)?.to_dtype(dtype)
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Where LoRA dropout masks come from (training only). The mask of a call must depend only
/// on the layer and on the trainer's current (seed, step, micro-batch), never on how many
/// times the layer ran: per-layer recomputation runs every layer twice and needs the same
/// mask both times.
pub trait DropoutMask: Send + Sync + std::fmt::Debug {
    /// The multiplier (0 or `1 / (1 − p)` per element) for the LoRA input of layer `name`
    /// (checkpoint weight name) of `shape`, or `None` when dropout is off right now.
    fn mask(
        &self,
        name: &str,
        shape: &Shape,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Option<Tensor>>;
}

/// A linear layer with an optional unmerged LoRA pair: `x·Wᵀ (+ b) + scale·(x·Aᵀ)·Bᵀ`.
///
/// It remembers the checkpoint name of its weight so that [`LoraLinear::attach`] can find its
/// pair in a [`LoraAdapter`]. Without a pair it is exactly a `candle_nn::Linear`.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    name: String,
    lora: Option<(Tensor, Tensor, f64)>,
    dropout: Option<std::sync::Arc<dyn DropoutMask>>,
}

impl LoraLinear {
    /// Loads `weight` `[out, in]` (and `bias` `[out]` when `bias`) from `vb`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        let base = if bias {
            candle_nn::linear(in_dim, out_dim, vb)?
        } else {
            candle_nn::linear_no_bias(in_dim, out_dim, vb)?
        };
        Ok(Self {
            base,
            name,
            lora: None,
            dropout: None,
        })
    }

    /// Checkpoint name of the weight (`…q_proj.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes this layer's pair from `adapter`, if it has one; returns whether it did. Fails if
    /// the pair's shapes do not fit the weight.
    pub fn attach(&mut self, adapter: &LoraAdapter) -> candle_core::Result<bool> {
        let Some((a, b)) = adapter.pairs.get(&self.name) else {
            return Ok(false);
        };
        let (out_dim, in_dim) = self.base.weight().dims2()?;
        if a.dim(1)? != in_dim || b.dim(0)? != out_dim {
            candle_core::bail!(
                "LoRA pair for {} is A {:?}, B {:?} but the weight is [{out_dim}, {in_dim}]",
                self.name,
                a.shape(),
                b.shape()
            );
        }
        let device = self.base.weight().device();
        self.lora = Some((a.to_device(device)?, b.to_device(device)?, adapter.scale));
        Ok(true)
    }

    /// Removes the pair (back to the plain base layer).
    pub fn detach(&mut self) {
        self.lora = None;
    }

    /// Sets (or with `None` removes) the source of dropout masks for the LoRA branch's input,
    /// as PEFT's `lora_dropout`: `scale·B·A·dropout(x)`.
    pub fn set_dropout(&mut self, source: Option<std::sync::Arc<dyn DropoutMask>>) {
        self.dropout = source;
    }
}

impl LoraLinear {
    /// The base weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    /// The attached pair `(A, B, scale)`, if any.
    pub fn lora(&self) -> Option<(&Tensor, &Tensor, f64)> {
        self.lora.as_ref().map(|(a, b, s)| (a, b, *s))
    }

    /// `x·Wᵀ (+ b) + scale·(x·Aᵀ)·Bᵀ`. With `grad` false the pair is used detached (no graph
    /// through `A`/`B` even when they are `Var`s: rollouts, the no-graph pass of per-layer
    /// recomputation); with `grad` true it is used as attached. The base weight goes through
    /// [`crate::layers::linear`], which keeps no gradient for a frozen weight.
    pub fn forward_t(&self, xs: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let out = crate::layers::linear(xs, self.base.weight())?;
        let out = match self.base.bias() {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        let Some((a, b, scale)) = &self.lora else {
            return Ok(out);
        };
        let (a, b) = if grad {
            (a.to_dtype(xs.dtype())?, b.to_dtype(xs.dtype())?)
        } else {
            (
                a.detach().to_dtype(xs.dtype())?,
                b.detach().to_dtype(xs.dtype())?,
            )
        };
        let dropped;
        let input = match &self.dropout {
            None => xs,
            Some(source) => match source.mask(&self.name, xs.shape(), xs.dtype(), xs.device())? {
                None => xs,
                Some(mask) => {
                    dropped = (xs * mask)?;
                    &dropped
                }
            },
        };
        let low = crate::layers::linear(input, &a)?;
        out + (crate::layers::linear(&low, &b)? * *scale)?
    }
}

impl Module for LoraLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(xs, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_translate_between_layouts() {
        let q = "model.language_model.layers.0.self_attn.q_proj";
        assert_eq!(
            to_layout(q, WeightLayout::Legacy),
            "model.layers.0.self_attn.q_proj"
        );
        assert_eq!(
            to_layout("model.layers.0.mlp.down_proj", WeightLayout::Nested),
            "model.language_model.layers.0.mlp.down_proj"
        );
        assert_eq!(
            to_layout("model.visual.blocks.1.mlp.down_proj", WeightLayout::Legacy),
            "visual.blocks.1.mlp.down_proj"
        );
        assert_eq!(
            to_layout("visual.blocks.1.mlp.down_proj", WeightLayout::Nested),
            "model.visual.blocks.1.mlp.down_proj"
        );
    }

    #[test]
    fn separate_and_merged_give_the_same_output() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0], [3.0, -1.0], [0.5, 0.0]], &dev).unwrap();
        let a = Tensor::new(&[[0.2f32, -0.4]], &dev).unwrap();
        let b = Tensor::new(&[[1f32], [0.0], [-2.0]], &dev).unwrap();
        let x = Tensor::new(&[[0.3f32, 0.7], [-1.0, 2.0]], &dev).unwrap();
        let sep = LoraLinear {
            base: Linear::new(w.clone(), None),
            name: "w".into(),
            lora: Some((a.clone(), b.clone(), 2.0)),
            dropout: None,
        };
        let merged = Linear::new((w + (b.matmul(&a).unwrap() * 2.0).unwrap()).unwrap(), None);
        let diff = (sep.forward(&x).unwrap() - merged.forward(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
        let plain = LoraLinear {
            base: Linear::new(Tensor::zeros((3, 2), DType::F32, &dev).unwrap(), None),
            name: "w".into(),
            lora: None,
            dropout: None,
        };
        assert_eq!(
            plain
                .forward(&x)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
