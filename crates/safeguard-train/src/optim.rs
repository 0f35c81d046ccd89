//! AdamW (PyTorch's update, HF's defaults), gradient clipping by global norm, and the
//! learning-rate schedules of `transformers.optimization`.
//!
//! The state (first and second moments per parameter, step count) is public and saved with
//! every checkpoint, so a resumed run continues bit for bit. Moments are f32 whatever the
//! parameters' dtype.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::lora::save_safetensors;

/// AdamW hyper-parameters (defaults: HF `TrainingArguments`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// β₁.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// β₂.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// ε, added to `√v̂`.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay (`p ← p − lr·λ·p`).
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.0,
        }
    }
}

/// AdamW over a fixed list of named parameters.
#[derive(Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates taken.
    pub step: u64,
    /// First moments, one per parameter, f32.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter, f32.
    pub v: Vec<Tensor>,
    names: Vec<String>,
}

impl AdamW {
    /// Fresh state (zero moments) for `params`, named `names` in checkpoints.
    pub fn new(config: AdamWConfig, params: &[Var], names: Vec<String>) -> Result<Self> {
        let zeros = |p: &Var| Tensor::zeros(p.shape(), DType::F32, p.device());
        Ok(Self {
            config,
            step: 0,
            m: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            v: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            names,
        })
    }

    /// One update of every parameter with its gradient, at learning rate `lr` — as
    /// `torch.optim.AdamW.step` (non-amsgrad, non-fused): decay, moments, bias-corrected step.
    pub fn update(&mut self, params: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        if params.len() != self.m.len() || grads.len() != params.len() {
            return Err(TrainError::Config {
                reason: format!(
                    "AdamW holds {} parameters but got {} and {} gradients",
                    self.m.len(),
                    params.len(),
                    grads.len()
                ),
            });
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let dtype = p.dtype();
            let g = g.to_dtype(DType::F32)?;
            let mut w = p.as_tensor().detach().to_dtype(DType::F32)?;
            if c.weight_decay != 0.0 {
                w = (&w * (1.0 - lr * c.weight_decay))?;
            }
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let w = (w - (m.div(&denom)? * step_size)?)?;
            p.set(&w.to_dtype(dtype)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Writes `m.<name>`, `v.<name>` and `step` (a u32 pair, low/high) to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(2 * self.m.len() + 1);
        for ((name, m), v) in self.names.iter().zip(&self.m).zip(&self.v) {
            tensors.push((format!("m.{name}"), m.to_device(&Device::Cpu)?));
            tensors.push((format!("v.{name}"), v.to_device(&Device::Cpu)?));
        }
        let step = [self.step as u32, (self.step >> 32) as u32];
        tensors.push(("step".into(), Tensor::new(&step, &Device::Cpu)?));
        save_safetensors(path, &tensors)
    }

    /// Replaces the state with the one saved at `path`; every parameter's moments must be
    /// there with its shape.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
        let bad = |reason: String| TrainError::File {
            path: path.to_path_buf(),
            reason,
        };
        let saved: HashMap<String, Tensor> =
            candle_core::safetensors::load(path, device).map_err(|e| bad(e.to_string()))?;
        for (i, name) in self.names.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = saved.get(&key).ok_or_else(|| bad(format!("no `{key}`")))?;
                if t.shape() != slot.shape() {
                    return Err(bad(format!(
                        "`{key}` is {:?}, the parameter {:?}",
                        t.shape(),
                        slot.shape()
                    )));
                }
                *slot = t.to_dtype(DType::F32)?;
            }
        }
        let step: Vec<u32> = saved
            .get("step")
            .ok_or_else(|| bad("no `step`".into()))?
            .to_vec1()?;
        let [lo, hi] = step[..] else {
            return Err(bad("`step` must hold two u32".into()));
        };
        self.step = lo as u64 | (hi as u64) << 32;
        Ok(())
    }
}

/// The global L2 norm of `grads` (as `torch.nn.utils.clip_grad_norm_`: the norm of the
/// per-tensor norms), in f64.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads {
        let n = g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        sq += n;
    }
    Ok(sq.sqrt())
}

/// Scales `grads` so their global norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (`× min(1, max_norm / (norm + 1e-6))`); returns the
/// norm before clipping. `max_norm ≤ 0` disables clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm.is_finite() {
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// Learning-rate schedules (the multiplier on the base rate at a step, as HF's `LambdaLR`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warmup, then constant (`get_constant_schedule_with_warmup`).
    Constant,
    /// Linear warmup, then linear decay to 0 (`get_linear_schedule_with_warmup`).
    Linear,
    /// Linear warmup, then half a cosine to 0 (`get_cosine_schedule_with_warmup`).
    Cosine,
}

impl Schedule {
    /// The multiplier for the update taken after `step` updates (0-based, as the scheduler's
    /// `last_epoch`), with `warmup` warmup steps out of `total`.
    pub fn factor(self, step: u64, warmup: u64, total: u64) -> f64 {
        let (s, w, t) = (step as f64, warmup as f64, total as f64);
        if step < warmup {
            return s / w.max(1.0);
        }
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            Schedule::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}
