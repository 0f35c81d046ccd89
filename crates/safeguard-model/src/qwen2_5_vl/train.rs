//! The training pass: forward and backward of a summed token cross-entropy over whole
//! sequences, with per-layer recomputation and a chunked LM head.
//!
//! **Per-layer recomputation** (gradient checkpointing by hand; candle keeps every
//! intermediate of a graph alive until the loss is dropped and has no checkpointing): one pass
//! without a graph keeps only each decoder layer's input; then from the top, each layer is
//! run again on its saved input as a fresh `Var` with the graph on, `Σ y·∂y` is backpropagated
//! through it alone, and the input's gradient is carried down. Peak memory is one layer's
//! graph plus the saved inputs (`layers × batch × seq × hidden`), instead of every layer's.
//!
//! **Chunked head.** The logits exist only at the positions that predict a target token, a
//! chunk of [`TrainOptions::head_chunk`] rows at a time, each chunk's log-softmax graph
//! backpropagated and dropped before the next: `[chunk, vocab]` instead of `[tokens, vocab]`.
//!
//! The gradient of every trainable `Var` passed in comes back summed over the passes; a `Var`
//! the loss does not reach comes back as `None`, which the caller treats as an error (a LoRA
//! pair the graph does not reach means a cut in the model code). Frozen weights get no
//! gradient tensor at all (see [`crate::layers::linear`]).

use candle_core::{DType, Tensor, Var, D};

use super::batch::pad_batch;
use super::{MRope, Prompt, Qwen2_5VlModel};
use crate::layers::{compute_dtype, linear};
use crate::ModelError;

/// One training sequence: the model input and which tokens are targets.
#[derive(Debug, Clone, Copy)]
pub struct TrainRow<'a> {
    /// The whole sequence with its images, as for [`Qwen2_5VlModel::forward`]. Its image
    /// embeddings may carry a graph (a vision-tower LoRA being trained).
    pub prompt: Prompt<'a>,
    /// `targets[i]`: token `i` is predicted from position `i − 1` and counted in the loss
    /// (`targets[0]` must be false). Same length as the input ids.
    pub targets: &'a [bool],
}

/// How the training pass runs.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Recompute each decoder layer in the backward pass instead of keeping the whole graph.
    pub recompute: bool,
    /// Target positions per LM-head chunk.
    pub head_chunk: usize,
    /// Factor on the loss before backpropagation (e.g. 1 / target tokens of the accumulated
    /// batch); the returned loss sum is unscaled.
    pub grad_scale: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            recompute: true,
            head_chunk: 512,
            grad_scale: 1.0,
        }
    }
}

/// A prepared batch: input embeddings `[b, seq, hidden]`, angles, flat indices of the
/// positions that predict a target, and the target ids.
struct Batch {
    x0: Tensor,
    rope: MRope,
    select: Tensor,
    labels: Tensor,
}

/// What one training pass gives back.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// `Σ −log p(target)` over the target tokens (unscaled).
    pub loss_sum: f64,
    /// Target tokens counted.
    pub tokens: usize,
    /// Gradient of `grad_scale · loss_sum` for each trainable `Var`, in the order given.
    pub grads: Vec<Option<Tensor>>,
}

/// Sums the gradients `store` holds for `vars` into `acc`.
fn collect(
    store: &candle_core::backprop::GradStore,
    vars: &[Var],
    acc: &mut [Option<Tensor>],
) -> candle_core::Result<()> {
    for (var, slot) in vars.iter().zip(acc.iter_mut()) {
        if let Some(g) = store.get(var.as_tensor()) {
            // Gradients computed through a `Var` weight record ops of their own: detach, or
            // they keep that graph alive and feed it into later backward passes.
            let g = g.detach();
            *slot = Some(match slot.take() {
                None => g,
                Some(prev) => (prev + g)?,
            });
        }
    }
    Ok(())
}

impl Qwen2_5VlModel {
    /// Forward and backward of `Σ −log p(target)` over the target tokens of `rows` (each with
    /// its own images and positions, right-padded to the longest as in
    /// [`Qwen2_5VlModel::forward_last_batch`]). Returns the loss, the token count and the
    /// gradients of `trainable`.
    pub fn train_step(
        &self,
        rows: &[TrainRow<'_>],
        trainable: &[Var],
        opts: &TrainOptions,
    ) -> Result<TrainOutput, ModelError> {
        let _span = tracing::trace_span!("train_step", rows = rows.len()).entered();
        let batch = self.train_batch(rows)?;
        let Batch {
            x0,
            rope,
            select,
            labels,
        } = batch;
        let mut grads = vec![None; trainable.len()];
        let text = &self.text;
        let layers = text.num_layers();
        let loss_sum = if opts.recompute {
            // Pass 1, no graph: keep each layer's input.
            let mut saved = Vec::with_capacity(layers + 1);
            saved.push(x0.detach());
            for i in 0..layers {
                let next = text
                    .forward_layer(i, saved.last().expect("pushed"), &rope, false)?
                    .detach();
                saved.push(next);
            }
            // The head on the top layer's output, then each layer from the top.
            let top = Var::from_tensor(&saved[layers])?;
            let (loss_sum, top_grad) = self.head_backward(
                top.as_tensor(),
                &select,
                &labels,
                trainable,
                opts,
                &mut grads,
            )?;
            let mut g = top_grad.ok_or_else(|| cut("the last decoder layer's output"))?;
            for i in (0..layers).rev() {
                let x = Var::from_tensor(&saved[i])?;
                let y = text.forward_layer(i, x.as_tensor(), &rope, true)?;
                let store = (y * g.detach())?.sum_all()?.backward()?;
                collect(&store, trainable, &mut grads)?;
                g = store
                    .get(x.as_tensor())
                    .map(Tensor::detach)
                    .ok_or_else(|| cut(&format!("the input of decoder layer {i}")))?;
            }
            if x0.track_op() {
                let store = (&x0 * g.detach())?.sum_all()?.backward()?;
                collect(&store, trainable, &mut grads)?;
            }
            loss_sum
        } else {
            let mut xs = x0;
            for i in 0..layers {
                xs = text.forward_layer(i, &xs, &rope, true)?;
            }
            let (loss_sum, _) =
                self.head_backward(&xs, &select, &labels, trainable, opts, &mut grads)?;
            loss_sum
        };
        Ok(TrainOutput {
            loss_sum,
            tokens: labels.dim(0)?,
            grads,
        })
    }

    /// `Σ −log p(target)` and the target count of `rows` without any graph (evaluation loss):
    /// LoRA pairs detached, the head in chunks of `head_chunk`.
    pub fn eval_loss(
        &self,
        rows: &[TrainRow<'_>],
        head_chunk: usize,
    ) -> Result<(f64, usize), ModelError> {
        let Batch {
            x0,
            rope,
            select,
            labels,
        } = self.train_batch(rows)?;
        let mut xs = x0.detach();
        for i in 0..self.text.num_layers() {
            xs = self.text.forward_layer(i, &xs, &rope, false)?.detach();
        }
        let hidden = self
            .text
            .final_norm(&xs)?
            .flatten_to(1)?
            .index_select(&select, 0)?;
        let n = hidden.dim(0)?;
        let mut sum = 0f64;
        for start in (0..n).step_by(head_chunk.max(1)) {
            let len = head_chunk.max(1).min(n - start);
            let logits = linear(&hidden.narrow(0, start, len)?, self.lm_head.weight())?;
            let logits = logits.to_dtype(compute_dtype(logits.dtype()))?;
            let nll = token_nll(&logits, &labels.narrow(0, start, len)?)?;
            sum += nll.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        Ok((sum, n))
    }

    /// Embeddings, M-RoPE angles and target positions of a right-padded batch.
    fn train_batch(&self, rows: &[TrainRow<'_>]) -> Result<Batch, ModelError> {
        if rows.is_empty() {
            return Err(ModelError::Input {
                reason: "a training batch needs at least one row".into(),
            });
        }
        let mut embeds = Vec::with_capacity(rows.len());
        let mut positions: [Vec<Vec<i64>>; 3] = Default::default();
        for (r, row) in rows.iter().enumerate() {
            let ids = row.prompt.input_ids;
            if row.targets.len() != ids.len() {
                return Err(ModelError::Input {
                    reason: format!(
                        "row {r}: {} target flags for {} tokens",
                        row.targets.len(),
                        ids.len()
                    ),
                });
            }
            if row.targets.first() == Some(&true) {
                return Err(ModelError::Input {
                    reason: format!("row {r}: the first token cannot be a target"),
                });
            }
            let index = self.positions(&row.prompt, 0)?;
            embeds.push(self.input_embeds(ids, row.prompt.image_embeds)?);
            for (axis, all) in positions.iter_mut().zip(index.positions) {
                axis.push(all);
            }
        }
        let (x0, _, longest) = pad_batch(&embeds, &mut positions)?;
        let device = self.lm_head.weight().device().clone();
        let rope = MRope::new(&self.cfg.text_config, &positions, &device)?;
        // Flat index of each position that predicts a target, and the target ids.
        let mut select = Vec::new();
        let mut labels = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            for i in 1..row.targets.len() {
                if row.targets[i] {
                    select.push((r * longest + i - 1) as u32);
                    labels.push(row.prompt.input_ids[i]);
                }
            }
        }
        if select.is_empty() {
            return Err(ModelError::Input {
                reason: "the batch has no target token".into(),
            });
        }
        Ok(Batch {
            x0,
            rope,
            select: Tensor::new(select.as_slice(), &device)?,
            labels: Tensor::new(labels.as_slice(), &device)?,
        })
    }

    /// Final norm, LM head and cross-entropy on the selected positions of `top`
    /// (`[b, seq, hidden]`), backpropagated chunk by chunk into `top` (returned when `top` is
    /// a `Var`) and the trainable `Var`s.
    fn head_backward(
        &self,
        top: &Tensor,
        select: &Tensor,
        labels: &Tensor,
        trainable: &[Var],
        opts: &TrainOptions,
        grads: &mut [Option<Tensor>],
    ) -> Result<(f64, Option<Tensor>), ModelError> {
        let hidden = self
            .text
            .final_norm(top)?
            .flatten_to(1)?
            .index_select(select, 0)?;
        let n = hidden.dim(0)?;
        let chunk = opts.head_chunk.max(1);
        let head = self.lm_head.weight();
        let mut loss_sum = 0f64;
        let mut hidden_grads = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let part = Var::from_tensor(&hidden.narrow(0, start, len)?.detach())?;
            let logits = linear(part.as_tensor(), head)?;
            let logits = logits.to_dtype(compute_dtype(logits.dtype()))?;
            let nll = token_nll(&logits, &labels.narrow(0, start, len)?)?;
            let sum = nll.sum_all()?;
            loss_sum += sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let store = (sum * opts.grad_scale)?.backward()?;
            collect(&store, trainable, grads)?;
            hidden_grads.push(
                store
                    .get(part.as_tensor())
                    .map(Tensor::detach)
                    .ok_or_else(|| cut("the LM head input"))?,
            );
        }
        let g = Tensor::cat(&hidden_grads, 0)?.to_dtype(hidden.dtype())?;
        let store = (hidden * g)?.sum_all()?.backward()?;
        collect(&store, trainable, grads)?;
        Ok((loss_sum, store.get(top).map(Tensor::detach)))
    }
}

/// `−log softmax(logits)[label]` per row (`[n, vocab]`, `[n]` → `[n]`), in differentiable
/// ops with the row maximum detached.
pub fn token_nll(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&labels.unsqueeze(1)?, 1)?;
    (log_z - picked)?.squeeze(1)
}

fn cut(what: &str) -> ModelError {
    ModelError::Input {
        reason: format!("no gradient reached {what}: a cut in the training graph"),
    }
}
