//! Full fine-tuning: every weight of the language model (token embedding, decoder layers,
//! final norm, LM head) is a trainable f32 `Var`; the vision tower stays frozen.
//!
//! The weights become `Var`s as the model is built ([`TrainableBackend`] wraps the checkpoint's
//! weight source), so the model code is the same one inference runs: a `Var` weight makes
//! [`safeguard_model::layers::linear`] take the plain matmul, whose backward gives the weight
//! gradient, and the norms take their composites. Saving writes a full checkpoint under the
//! checkpoint's own tensor names (f32), which transformers and SafeGuard load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::Init;
use safeguard_model::qwen2_5_vl::WeightLayout;

use crate::error::Result;
use crate::merge::save_replaced;

/// A weight source that hands out `Var`s for the language model's tensors (and records them)
/// and plain tensors for the rest.
pub struct TrainableBackend {
    inner: Box<dyn SimpleBackend>,
    text_prefix: String,
    made: Arc<Mutex<Vec<(String, Var)>>>,
}

impl TrainableBackend {
    /// Wraps `inner` for a checkpoint of `layout`; the `Var`s made appear in `made`.
    pub fn new(
        inner: Box<dyn SimpleBackend>,
        layout: WeightLayout,
        made: Arc<Mutex<Vec<(String, Var)>>>,
    ) -> Self {
        Self {
            inner,
            text_prefix: format!("{}.", layout.text_prefix()),
            made,
        }
    }

    fn trainable(&self, name: &str) -> bool {
        name.starts_with(&self.text_prefix) || name == "lm_head.weight"
    }

    fn wrap(&self, name: &str, t: Tensor) -> candle_core::Result<Tensor> {
        if !self.trainable(name) {
            return Ok(t);
        }
        let mut made = self.made.lock().expect("not poisoned");
        if let Some((_, v)) = made.iter().find(|(n, _)| n == name) {
            return Ok(v.as_tensor().clone());
        }
        let var = Var::from_tensor(&t)?;
        made.push((name.to_string(), var.clone()));
        Ok(var.as_tensor().clone())
    }
}

impl SimpleBackend for TrainableBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.wrap(name, t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked(name, dtype, dev)?;
        self.wrap(name, t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// The trainable weights of a fully fine-tuned model, by checkpoint name (sorted).
#[derive(Debug, Clone)]
pub struct FullParams {
    vars: Vec<(String, Var)>,
    /// The checkpoint the weights came from (its other tensors and files are copied on save).
    pub source_dir: PathBuf,
}

impl FullParams {
    /// Takes the `Var`s a [`TrainableBackend`] made.
    pub fn new(made: &Mutex<Vec<(String, Var)>>, source_dir: &Path) -> Self {
        let mut vars = made.lock().expect("not poisoned").clone();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            vars,
            source_dir: source_dir.to_path_buf(),
        }
    }

    /// The `Var`s, in name order.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Checkpoint names, in the order of [`FullParams::vars`].
    pub fn names(&self) -> Vec<String> {
        self.vars.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Writes a full checkpoint to `dir`: the trained weights (f32) in place of the
    /// originals, everything else copied from the source checkpoint.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let replacements: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        save_replaced(&self.source_dir, dir, &replacements, None)
    }
}
