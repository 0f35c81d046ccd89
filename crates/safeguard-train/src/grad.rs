//! The SFT loss and its LoRA gradients for one sequence: what `safeguard debug grad` writes and
//! what the PyTorch + PEFT parity test compares.
//!
//! The loss is transformers' with `labels[:N] = -100`: the mean cross-entropy of predicting
//! token `i + 1` at every position `i ≥ N − 1`, i.e. over the tokens from index `N` on, where
//! `N` counts positions in the expanded sequence (each image as its vision-start, pads and
//! vision-end tokens).

use candle_core::Tensor;
use safeguard_model::qwen2_5_vl::train::{TrainOptions, TrainRow};
use safeguard_model::qwen2_5_vl::{Prompt, Qwen2_5VlModel};

use crate::error::{Result, TrainError};
use crate::lora::TrainableLora;

/// Loss, token count and per-tensor gradients under the adapter's key names.
#[derive(Debug)]
pub struct GradReport {
    /// Mean cross-entropy over the target tokens.
    pub loss: f64,
    /// Target tokens.
    pub tokens: usize,
    /// `(adapter key, ∂loss/∂tensor)`, f32, in the adapter's order.
    pub grads: Vec<(String, Tensor)>,
}

/// Attaches `lora` to `model` and runs one forward/backward pass of the mean cross-entropy
/// over the tokens of `prompt` from `target_from` on. Fails if a LoRA tensor gets no gradient
/// (a cut in the graph).
pub fn sft_gradients(
    model: &mut Qwen2_5VlModel,
    lora: &TrainableLora,
    prompt: &Prompt<'_>,
    target_from: usize,
    opts: &TrainOptions,
) -> Result<GradReport> {
    let len = prompt.input_ids.len();
    if target_from == 0 || target_from >= len {
        return Err(TrainError::Config {
            reason: format!(
                "--target-from must be in 1..{len} (the sequence has {len} tokens), not {target_from}"
            ),
        });
    }
    lora.attach(model)?;
    let targets: Vec<bool> = (0..len).map(|i| i >= target_from).collect();
    let tokens = len - target_from;
    let vars = lora.vars();
    let out = model.train_step(
        &[TrainRow {
            prompt: *prompt,
            targets: &targets,
        }],
        &vars,
        &TrainOptions {
            grad_scale: 1.0 / tokens as f64,
            ..*opts
        },
    )?;
    let mut grads = Vec::with_capacity(vars.len());
    for (name, g) in lora.names().into_iter().zip(out.grads) {
        let g = g.ok_or_else(|| TrainError::Config {
            reason: format!("no gradient reached `{name}`: a cut in the training graph"),
        })?;
        grads.push((name, g.to_dtype(candle_core::DType::F32)?));
    }
    Ok(GradReport {
        loss: out.loss_sum / out.tokens as f64,
        tokens: out.tokens,
        grads,
    })
}
