//! Score mode in batches: many sequences that start with the same cached prefix (the policy)
//! run their tails (image block + question) in one decoder pass of batch `rows`, and only the
//! logits of each row's last token come back.
//!
//! **Padding without a padding mask.** The tails are right-padded to the longest one. Under
//! the causal mask the tail token `j` of a row attends to the prefix and to tail positions
//! `0..=j`; a row's pads sit at positions `≥ its length > j`, so no real token attends to a
//! pad in any layer. Everything else (norms, MLP, projections) acts per token, so by induction
//! over the layers the hidden state of every real token, and in particular of the last one,
//! is the one it has without the pads. The pads' own states are computed and thrown away.
//! They must stay finite, though: a masked score is `q·k − ∞`, which is NaN if `k` is NaN, so
//! each pad reuses the embedding (and the position ids) of its row's last real token.
//!
//! The prefix's keys/values (batch 1) are repeated to the batch inside the cache the first
//! time the pass appends to it; the caller's cache is cloned (cheap, reference-counted) and
//! not changed.

use candle_core::{DType, Module, Tensor};

use super::{KvCache, MRope, Prompt, Qwen2_5VlModel};
use crate::ModelError;

impl Qwen2_5VlModel {
    /// Runs, for each row, the tokens of `rows[i].input_ids` after `prefix.seq_len()` in one
    /// decoder pass of batch `rows.len()` and returns f32 logits `[rows, vocab]` of each row's
    /// last token.
    ///
    /// Every row must start with the same `prefix.seq_len()` tokens (checked among the rows;
    /// the cache itself does not record token ids), whose keys/values `prefix` holds with
    /// batch 1 (or 0 tokens: then the rows share nothing and run whole). `prefix` is left
    /// unchanged. Each row carries its own grids and image embeddings as for
    /// [`Qwen2_5VlModel::forward`] (e.g. slices of one [`Qwen2_5VlModel::embed_images`] call
    /// over all rows' images). Row `i` of the result equals `forward` of row `i` on a clone
    /// of `prefix`, up to float rounding (the tests bound it by 1e-5 of the logit range).
    pub fn forward_last_batch(
        &self,
        rows: &[Prompt<'_>],
        prefix: &KvCache,
    ) -> Result<Tensor, ModelError> {
        let _span = tracing::trace_span!("forward_last_batch", rows = rows.len()).entered();
        let cached = prefix.seq_len();
        let first = rows.first().ok_or_else(|| ModelError::Input {
            reason: "forward_last_batch needs at least one row".into(),
        })?;
        if cached > 0 && prefix.batch_size() != 1 {
            return Err(ModelError::Input {
                reason: format!(
                    "the prefix cache must hold one sequence, not {}",
                    prefix.batch_size()
                ),
            });
        }
        let mut embeds = Vec::with_capacity(rows.len());
        let mut positions: [Vec<Vec<i64>>; 3] = Default::default();
        for (r, row) in rows.iter().enumerate() {
            let index = self.positions(row, cached)?;
            if row.input_ids[..cached] != first.input_ids[..cached] {
                return Err(ModelError::Input {
                    reason: format!(
                        "row {r} does not start with the {cached} prefix tokens of row 0"
                    ),
                });
            }
            let tail = &row.input_ids[cached..];
            embeds.push(self.input_embeds(tail, row.image_embeds)?);
            for (axis, all) in positions.iter_mut().zip(index.positions) {
                axis.push(all[cached..].to_vec());
            }
        }
        let (batch, lens, longest) = pad_batch(&embeds, &mut positions)?;
        let device = self.lm_head.weight().device();
        let rope = MRope::new(&self.cfg.text_config, &positions, device)?;
        let mut cache = prefix.clone();
        let hidden = self.text.forward(&batch, &rope, &mut cache)?;
        // Row r's last real token sits at r·longest + len − 1 of the flattened batch.
        let last: Vec<u32> = lens
            .iter()
            .enumerate()
            .map(|(r, &n)| (r * longest + n - 1) as u32)
            .collect();
        let last = Tensor::new(last.as_slice(), device)?;
        let hidden = hidden.flatten_to(1)?.index_select(&last, 0)?;
        Ok(self
            .lm_head
            .forward(&hidden.unsqueeze(0)?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
    }
}

/// Right-pads rows of embeddings (`[n_i, hidden]`) and their position ids (`[3][rows][n_i]`)
/// to the longest row with copies of each row's last token (see the module docs): the stacked
/// `[rows, longest, hidden]`, each row's length, and the longest.
pub(super) fn pad_batch(
    embeds: &[Tensor],
    positions: &mut [Vec<Vec<i64>>; 3],
) -> candle_core::Result<(Tensor, Vec<usize>, usize)> {
    let lens: Vec<usize> = positions[0].iter().map(Vec::len).collect();
    let longest = lens.iter().copied().max().unwrap_or(0);
    let padded = embeds
        .iter()
        .zip(&lens)
        .map(|(e, &n)| pad_rows(e, n, longest))
        .collect::<candle_core::Result<Vec<_>>>()?;
    for row in positions.iter_mut().flatten() {
        let last = *row.last().expect("every row has a token");
        row.resize(longest, last);
    }
    Ok((Tensor::stack(&padded, 0)?, lens, longest))
}

/// `embeds` (`[n, hidden]`) extended to `[len, hidden]` with copies of its last row.
fn pad_rows(embeds: &Tensor, n: usize, len: usize) -> candle_core::Result<Tensor> {
    if n == len {
        return Ok(embeds.clone());
    }
    let hidden = embeds.dim(1)?;
    let pad = embeds.narrow(0, n - 1, 1)?.expand((len - n, hidden))?;
    Tensor::cat(&[embeds, &pad], 0)
}
