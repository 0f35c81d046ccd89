//! Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): a ViT with window attention and a
//! 2 × 2 patch merger feeding a Qwen2 decoder with multimodal RoPE.
//!
//! Reference weights: <https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct> (also 3B, 32B,
//! 72B); Python reference: `transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py`.
//!
//! - [`config`]: `config.json` in the flat and the nested layout.
//! - [`vision`]: the vision tower (patch embedding as a matmul, 2-D RoPE, window attention with
//!   window/reverse index, full-attention blocks, RMSNorm, SwiGLU, patch merger).
//! - [`text`]: the decoder (GQA, q/k/v bias, RMSNorm, SwiGLU, M-RoPE, KV cache).
//! - [`mod@rope_index`]: the multimodal position ids (`get_rope_index`).
//!
//! [`Qwen2_5VlModel::forward`] takes the **whole** token sequence every time and runs only the
//! tokens that are not yet in the [`KvCache`]: prefill, decoding and a shared-prefix cache are
//! one code path, and the position ids are always those `get_rope_index` gives for the full
//! sequence. [`Qwen2_5VlModel::forward_last_batch`] scores several sequences that share a
//! cached prefix in one decoder pass (right-padded, last-token logits only).

mod batch;
pub mod config;
mod config_keys;
pub mod rope_index;
pub mod text;
pub mod train;
pub mod vision;

use candle_core::{DType, IndexOp, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

pub use config::{Config, ConfigLayout, ModelConfig, TextConfig, VisionConfig};
pub use rope_index::{rope_index, RopeIndex};
pub use text::{KvCache, MRope, TextModel};
pub use vision::{VisionInputs, VisionModel};

use crate::layers::AttentionMode;
use crate::lora::{LoraAdapter, LoraLinear};
use crate::ModelError;

/// Tensor names of a checkpoint. Both are found on the hub; the loader picks one with
/// [`WeightLayout::detect`] and logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `visual.*`, `model.{embed_tokens,layers,norm}.*`, `lm_head.weight` (the released
    /// checkpoints, and what transformers 5 writes on save).
    Legacy,
    /// `model.visual.*`, `model.language_model.*`, `lm_head.weight` (the module names of
    /// transformers ≥ 4.52, found in some re-saved checkpoints and in PEFT adapter names).
    Nested,
}

impl WeightLayout {
    /// Picks the layout from the tensor names present (`has(name)`), by the name of the
    /// token embedding; `None` if neither is present.
    pub fn detect(has: impl Fn(&str) -> bool) -> Option<Self> {
        if has("model.language_model.embed_tokens.weight") {
            Some(Self::Nested)
        } else if has("model.embed_tokens.weight") {
            Some(Self::Legacy)
        } else {
            None
        }
    }

    /// Prefix of the vision tower's tensors.
    pub fn visual_prefix(self) -> &'static str {
        match self {
            Self::Legacy => "visual",
            Self::Nested => "model.visual",
        }
    }

    /// Prefix of the decoder's tensors.
    pub fn text_prefix(self) -> &'static str {
        match self {
            Self::Legacy => "model",
            Self::Nested => "model.language_model",
        }
    }
}

/// The dtype the vision tower runs in when the model is loaded in `dtype`: the same, except
/// f32 for f16. Qwen2.5-VL's vision tower overflows float16 on the released weights (the MLP
/// of its last blocks reaches values above 65504: llama.cpp issue 17534 saw `-inf` in block 31
/// of the 3B, ollama forces f32 for it), which turns every image embedding into NaN. bf16 has
/// f32's range and is kept.
pub fn vision_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 => DType::F32,
        other => other,
    }
}

/// Which logits [`Qwen2_5VlModel::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// `[vocab]` for the last token (generation, verdict scoring).
    Last,
    /// `[new_tokens, vocab]` for every token run in this call (teacher-forced log-probs).
    All,
}

/// One model call: the whole sequence so far plus what its images need.
#[derive(Debug, Clone, Copy)]
pub struct Prompt<'a> {
    /// Every token of the sequence, including those already in the cache.
    pub input_ids: &'a [u32],
    /// `(t, h, w)` in patches of every image of the sequence, in order.
    pub grids: &'a [[usize; 3]],
    /// Embeddings of all images, concatenated (`[Σ tokens, hidden]`, from
    /// [`Qwen2_5VlModel::embed_images`]); may be `None` when no `<|image_pad|>` token is left
    /// to run.
    pub image_embeds: Option<&'a Tensor>,
}

/// The full model: vision tower, decoder and LM head.
#[derive(Debug, Clone)]
pub struct Qwen2_5VlModel {
    visual: VisionModel,
    text: TextModel,
    lm_head: Linear,
    cfg: Config,
}

impl Qwen2_5VlModel {
    /// Loads the model from `vb` at the checkpoint root. The weight layout is passed explicitly
    /// because it is a property of the file, not of `config.json`.
    ///
    /// Under `f16` the vision tower is built in f32 instead (see [`vision_dtype`]).
    pub fn new(cfg: &Config, layout: WeightLayout, vb: VarBuilder) -> candle_core::Result<Self> {
        let vision_vb = vb
            .pp(layout.visual_prefix())
            .set_dtype(vision_dtype(vb.dtype()));
        let visual = VisionModel::new(&cfg.vision_config, vision_vb)?;
        let text = TextModel::new(&cfg.text_config, vb.pp(layout.text_prefix()))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(text.embedding_weight().clone(), None)
        } else {
            let t = &cfg.text_config;
            candle_nn::linear_no_bias(t.hidden_size, t.vocab_size, vb.pp("lm_head"))?
        };
        Ok(Self {
            visual,
            text,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// Attaches a LoRA adapter unmerged (training, or switching adapters without reloading):
    /// every targeted projection of the vision blocks and decoder layers gets its pair. Fails,
    /// naming it, if a target is not such a projection (e.g. the merger or `lm_head`) or does
    /// not fit its shape. Returns the number of layers that got a pair.
    pub fn attach_lora(&mut self, adapter: &LoraAdapter) -> Result<usize, ModelError> {
        let mut attached = std::collections::HashSet::new();
        for linear in self.visual.linears_mut().chain(self.text.linears_mut()) {
            if linear.attach(adapter)? {
                attached.insert(linear.name().to_string());
            }
        }
        let mut missing: Vec<&str> = adapter
            .targets()
            .filter(|t| !attached.contains(*t))
            .collect();
        missing.sort_unstable();
        if let Some(first) = missing.first() {
            return Err(ModelError::Lora {
                reason: format!("targets `{first}` ({} unmatched in all), which is not a LoRA-capable projection", missing.len()),
            });
        }
        Ok(attached.len())
    }

    /// The LoRA-capable projections: checkpoint weight name, `[out, in]`, and whether it is in
    /// the vision tower; vision blocks first, then decoder layers, each in module order.
    pub fn projections(&mut self) -> Vec<(String, [usize; 2], bool)> {
        let mut out = Vec::new();
        for (linear, vision) in self
            .visual
            .linears_mut()
            .map(|l| (l, true))
            .chain(self.text.linears_mut().map(|l| (l, false)))
        {
            let dims = linear.weight().dims();
            out.push((linear.name().to_string(), [dims[0], dims[1]], vision));
        }
        out
    }

    /// How attention is computed in the vision tower and the decoder (default
    /// [`AttentionMode::Auto`]: eager for small inputs, tiled where the scores would be large).
    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.visual.set_attention_mode(mode);
        self.text.set_attention_mode(mode);
    }

    /// Gives every projection `source` as its LoRA dropout (`None`: no dropout).
    pub fn set_lora_dropout(
        &mut self,
        source: Option<std::sync::Arc<dyn crate::lora::DropoutMask>>,
    ) {
        for linear in self.visual.linears_mut().chain(self.text.linears_mut()) {
            linear.set_dropout(source.clone());
        }
    }

    /// Removes any attached LoRA pairs.
    pub fn detach_lora(&mut self) {
        self.visual
            .linears_mut()
            .chain(self.text.linears_mut())
            .for_each(LoraLinear::detach);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// dtype of the decoder's weights (the vision tower's may differ, see [`vision_dtype`]).
    pub fn dtype(&self) -> DType {
        self.text.dtype()
    }

    /// dtype the vision tower runs in.
    pub fn vision_dtype(&self) -> DType {
        self.visual.dtype()
    }

    /// `<|image_pad|>` tokens an image of grid `(t, h, w)` patches takes.
    pub fn image_tokens(&self, grid: [usize; 3]) -> usize {
        self.visual.tokens_for_grid(grid)
    }

    /// Runs the vision tower: `[Σ tokens, hidden]`, images in order. The pixels are moved to
    /// the model's device and dtype.
    pub fn embed_images(&self, inputs: &VisionInputs) -> Result<Tensor, ModelError> {
        let device = self.lm_head.weight().device();
        let pixels = inputs
            .pixel_values
            .to_device(device)?
            .to_dtype(self.visual.dtype())?;
        Ok(self.visual.forward(&VisionInputs {
            pixel_values: pixels,
            grid_thw: inputs.grid_thw.clone(),
        })?)
    }

    /// Runs the tokens of `prompt.input_ids` that are not yet in `cache` (all of them when it is
    /// empty), appends them to the cache and returns f32 logits (see [`Logits`]).
    pub fn forward(
        &self,
        prompt: &Prompt<'_>,
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<Tensor, ModelError> {
        let ids = prompt.input_ids;
        let cached = cache.seq_len();
        let index = self.positions(prompt, cached)?;
        let tail = &ids[cached..];
        let device = self.lm_head.weight().device();
        let embeds = self.input_embeds(tail, prompt.image_embeds)?;
        let positions: [Vec<Vec<i64>>; 3] =
            index.positions.map(|axis| vec![axis[cached..].to_vec()]);
        let rope = MRope::new(&self.cfg.text_config, &positions, device)?;
        let hidden = self
            .text
            .forward(&embeds.unsqueeze(0)?, &rope, cache)?
            .squeeze(0)?;
        let hidden = match which {
            Logits::Last => hidden.i(tail.len() - 1)?,
            Logits::All => hidden,
        };
        Ok(self
            .lm_head
            .forward(&hidden.unsqueeze(0)?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
    }

    /// The LM head's weight `[vocab, hidden]` (the token embedding when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.weight()
    }

    /// The decoder.
    pub fn text(&self) -> &TextModel {
        &self.text
    }

    /// Checks that `prompt` has tokens after the `cached` ones and no video, and returns the
    /// position ids of its whole sequence.
    pub(crate) fn positions(
        &self,
        prompt: &Prompt<'_>,
        cached: usize,
    ) -> Result<RopeIndex, ModelError> {
        let ids = prompt.input_ids;
        if cached >= ids.len() {
            return Err(ModelError::Input {
                reason: format!(
                    "{} tokens given but {cached} are already cached: nothing to run",
                    ids.len()
                ),
            });
        }
        if let Some(i) = ids.iter().position(|&t| t == self.cfg.video_token_id) {
            return Err(ModelError::Input {
                reason: format!("token {i} is <|video_pad|>: video input is not supported yet"),
            });
        }
        let merge = self.cfg.vision_config.spatial_merge_size;
        rope_index(ids, self.cfg.image_token_id, prompt.grids, merge)
    }

    /// Token embeddings of `tail` with its `<|image_pad|>` rows replaced by the last rows of
    /// `image_embeds` (the tail's images are the last ones of the sequence): `[tail, hidden]`.
    fn input_embeds(
        &self,
        tail: &[u32],
        image_embeds: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let device = self.lm_head.weight().device();
        let ids = Tensor::new(tail, device)?;
        let text = self.text.embed(&ids)?;
        let pads: Vec<usize> = (0..tail.len())
            .filter(|&i| tail[i] == self.cfg.image_token_id)
            .collect();
        if pads.is_empty() {
            return Ok(text);
        }
        let images = image_embeds.ok_or_else(|| ModelError::Input {
            reason: format!(
                "{} <|image_pad|> tokens to run but no image embeddings given",
                pads.len()
            ),
        })?;
        let total = images.dim(0)?;
        if total < pads.len() {
            return Err(ModelError::Input {
                reason: format!(
                    "{} <|image_pad|> tokens to run but only {total} image embeddings",
                    pads.len()
                ),
            });
        }
        let images = images
            .narrow(0, total - pads.len(), pads.len())?
            .to_dtype(text.dtype())?;
        // Row i of the result: text row i, or image row k for the k-th pad token.
        let mut index: Vec<u32> = (0..tail.len() as u32).collect();
        for (k, &i) in pads.iter().enumerate() {
            index[i] = (tail.len() + k) as u32;
        }
        let index = Tensor::new(index.as_slice(), device)?;
        Ok(Tensor::cat(&[&text, &images], 0)?.index_select(&index, 0)?)
    }
}
