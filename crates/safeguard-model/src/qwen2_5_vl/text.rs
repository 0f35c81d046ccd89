//! The Qwen2.5-VL language model (`Qwen2_5_VLTextModel`): a Qwen2 decoder with grouped-query
//! attention, biases on q/k/v, RMSNorm, SwiGLU and multimodal RoPE (M-RoPE).
//!
//! M-RoPE: every token has three position ids (temporal, height, width; equal for text
//! tokens). The `head_dim / 2` rotary frequencies are split by `mrope_section` (e.g. 16/24/24):
//! section `k` rotates by the position on axis `k mod 3`. The positions themselves come from
//! [`super::rope_index()`].
//!
//! The KV cache ([`KvCache`]) keeps one `(key, value)` pair per layer, keys already rotated,
//! and grows by concatenation; cloning it is cheap (tensors are reference-counted), which is
//! what a shared-prefix cache needs. A cache of batch 1 extended by a batch of `b` rows is
//! repeated to `b` rows first, so one cached prefix serves a whole batch.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Activation, Embedding, VarBuilder};

use super::config::TextConfig;
use crate::layers::{apply_rope, attention, repeat_kv, AttentionMode, Mask, RmsNorm};
use crate::lora::LoraLinear;

/// Keys and values of every layer for the tokens seen so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens stored (0 when empty).
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    /// Sequences stored side by side (the batch dimension; 0 when empty). A cache of batch 1
    /// can be extended by a batch of any size: its contents are then shared by every row.
    pub fn batch_size(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(0).ok())
            .unwrap_or(0)
    }

    /// Appends `k`, `v` (`[b, kv_heads, new, d]`) for `layer` and returns the full keys and
    /// values. Cached entries of batch 1 are repeated to batch `b` first (a shared prefix);
    /// any other batch mismatch is an error.
    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => {
                let (pk, pv) = (
                    broadcast_batch(pk, k.dim(0)?)?,
                    broadcast_batch(pv, v.dim(0)?)?,
                );
                (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
            }
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// `cached` (`[1 or b, kv_heads, seq, d]`) with batch `b`: repeated (and made contiguous, as
/// the concatenation that follows copies it anyway) when it holds one row.
fn broadcast_batch(cached: Tensor, b: usize) -> Result<Tensor> {
    let (cb, heads, seq, d) = cached.dims4()?;
    match cb {
        _ if cb == b => Ok(cached),
        1 => cached.expand((b, heads, seq, d))?.contiguous(),
        _ => candle_core::bail!("KV cache holds batch {cb} but {b} rows were given"),
    }
}

/// The M-RoPE angles of one forward pass: cos/sin `[b, seq, head_dim / 2]`, f32.
#[derive(Debug, Clone)]
pub struct MRope {
    cos: Tensor,
    sin: Tensor,
}

impl MRope {
    /// Builds the angles from position ids `[3][b][seq]` (temporal, height, width).
    pub fn new(cfg: &TextConfig, positions: &[Vec<Vec<i64>>; 3], device: &Device) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim() as f64))
            .collect();
        // Axis used by each frequency index.
        let mut axis_of = Vec::with_capacity(half);
        for (section, &n) in cfg.mrope_section.iter().enumerate() {
            axis_of.extend(std::iter::repeat_n(section % 3, n));
        }
        let (b, seq) = (positions[0].len(), positions[0].first().map_or(0, Vec::len));
        if positions
            .iter()
            .any(|axis| axis.len() != b || axis.iter().any(|row| row.len() != seq))
        {
            candle_core::bail!("M-RoPE positions must be [3][{b}][{seq}]");
        }
        let mut angles = Vec::with_capacity(b * seq * half);
        let [t_rows, h_rows, w_rows] = positions;
        for ((t_row, h_row), w_row) in t_rows.iter().zip(h_rows).zip(w_rows) {
            for ((&t, &h), &w) in t_row.iter().zip(h_row).zip(w_row) {
                let pos = [t, h, w];
                angles.extend(
                    inv_freq
                        .iter()
                        .zip(&axis_of)
                        .map(|(f, &axis)| (pos[axis] as f64 * f) as f32),
                );
            }
        }
        let angles = Tensor::from_vec(angles, (b, seq, half), device)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
    act: Activation,
}

impl Mlp {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: LoraLinear::new(h, i, false, vb.pp("gate_proj"))?,
            up_proj: LoraLinear::new(h, i, false, vb.pp("up_proj"))?,
            down_proj: LoraLinear::new(i, h, false, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }
}

impl Mlp {
    fn forward(&self, xs: &Tensor, grad: bool) -> Result<Tensor> {
        let gate = self.gate_proj.forward_t(xs, grad)?.apply(&self.act)?;
        let up = self.up_proj.forward_t(xs, grad)?;
        self.down_proj.forward_t(&(gate * up)?, grad)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Self {
            q_proj: LoraLinear::new(h, nh * d, true, vb.pp("q_proj"))?,
            k_proj: LoraLinear::new(h, nkv * d, true, vb.pp("k_proj"))?,
            v_proj: LoraLinear::new(h, nkv * d, true, vb.pp("v_proj"))?,
            o_proj: LoraLinear::new(nh * d, h, false, vb.pp("o_proj"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        })
    }

    fn forward(&self, xs: &Tensor, step: &mut Step<'_>, layer: usize) -> Result<Tensor> {
        let (b, seq, _) = xs.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((b, seq, n, self.head_dim))?.transpose(1, 2);
        let g = step.grad;
        let q = heads(self.q_proj.forward_t(xs, g)?, self.num_heads)?;
        let k = heads(self.k_proj.forward_t(xs, g)?, self.num_kv_heads)?;
        let v = heads(self.v_proj.forward_t(xs, g)?, self.num_kv_heads)?;
        let q = apply_rope(&q, &step.rope.cos, &step.rope.sin)?;
        let k = apply_rope(&k, &step.rope.cos, &step.rope.sin)?;
        let (k, v) = step.cache.append(layer, k, v.contiguous()?)?;
        let n_rep = self.num_heads / self.num_kv_heads;
        let out = attention(
            &q,
            &repeat_kv(k, n_rep)?,
            &repeat_kv(v, n_rep)?,
            step.mask,
            step.attention,
        )?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, seq, self.num_heads * self.head_dim))?;
        self.o_proj.forward_t(&out, g)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    fn linears_mut(&mut self) -> [&mut LoraLinear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    fn forward(&self, xs: &Tensor, step: &mut Step<'_>, layer: usize) -> Result<Tensor> {
        let xs = (xs
            + self
                .self_attn
                .forward(&self.input_layernorm.forward(xs)?, step, layer)?)?;
        &xs + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?, step.grad)?
    }
}

/// What one forward pass shares across layers.
struct Step<'a> {
    rope: &'a MRope,
    mask: Mask,
    attention: AttentionMode,
    cache: &'a mut KvCache,
    /// Whether LoRA pairs are used as attached (`Var`s keep their graph) or detached.
    grad: bool,
}

/// Token embeddings, decoder layers and the final norm (weights under `model.` or
/// `model.language_model.`). The LM head lives in the top-level model.
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    cfg: TextConfig,
    attention: AttentionMode,
}

impl TextModel {
    /// Loads the decoder from `vb` positioned at its prefix.
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            embed_tokens: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
            cfg: cfg.clone(),
            attention: AttentionMode::default(),
        })
    }

    /// How the layers compute attention (a long prefill needs the tiled path).
    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.attention = mode;
    }

    /// Embeds token ids `[b, seq]` → `[b, seq, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// The embedding matrix `[vocab, hidden]` (shared with a tied LM head).
    pub fn embedding_weight(&self) -> &Tensor {
        self.embed_tokens.embeddings()
    }

    /// Runs the decoder on `embeds` `[b, seq, hidden]` whose tokens follow the `cache` contents,
    /// with M-RoPE angles for these tokens; appends their keys/values to the cache and returns
    /// the normed hidden states `[b, seq, hidden]`.
    pub fn forward(&self, embeds: &Tensor, rope: &MRope, cache: &mut KvCache) -> Result<Tensor> {
        let _span = tracing::trace_span!("text_forward").entered();
        let (_, seq, _) = embeds.dims3()?;
        let past = cache.seq_len();
        // One new token sees everything; several see the past and what precedes them.
        let mask = if seq > 1 {
            Mask::Causal { past }
        } else {
            Mask::None
        };
        let mut step = Step {
            rope,
            mask,
            attention: self.attention,
            cache,
            grad: true,
        };
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, &mut step, i)?;
        }
        self.norm.forward(&xs)
    }

    /// Decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs decoder layer `layer` alone on whole sequences `xs` `[b, seq, hidden]` (causal,
    /// nothing cached): the unit of per-layer recomputation in training. With `grad` false the
    /// LoRA pairs are used detached, so a `Var`-backed adapter builds no graph.
    pub fn forward_layer(
        &self,
        layer: usize,
        xs: &Tensor,
        rope: &MRope,
        grad: bool,
    ) -> Result<Tensor> {
        let decoder = self
            .layers
            .get(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no decoder layer {layer}")))?;
        let mut cache = KvCache::new();
        let mut step = Step {
            rope,
            mask: Mask::Causal { past: 0 },
            attention: self.attention,
            cache: &mut cache,
            grad,
        };
        decoder.forward(xs, &mut step, layer)
    }

    /// The final RMSNorm.
    pub fn final_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.norm.forward(xs)
    }

    /// The LoRA-capable projections of every layer (q/k/v/o, gate/up/down).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers.iter_mut().flat_map(DecoderLayer::linears_mut)
    }

    /// dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(b: usize, seq: usize, value: f32) -> Tensor {
        Tensor::full(value, (b, 2, seq, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_batch_one_prefix_is_repeated_to_the_new_batch() {
        let mut cache = KvCache::new();
        cache
            .append(0, filled(1, 3, 1.0), filled(1, 3, 2.0))
            .unwrap();
        assert_eq!((cache.seq_len(), cache.batch_size()), (3, 1));
        let mut batch = cache.clone();
        let (k, v) = batch
            .append(0, filled(5, 2, 7.0), filled(5, 2, 8.0))
            .unwrap();
        assert_eq!(k.dims(), &[5, 2, 5, 4]);
        let row0 = k.get(0).unwrap().get(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            row0.iter().map(|r| r[3]).collect::<Vec<_>>(),
            [1.0, 1.0, 1.0, 7.0, 7.0]
        );
        let row4 = v.get(4).unwrap().get(1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            row4.iter().map(|r| r[0]).collect::<Vec<_>>(),
            [2.0, 2.0, 2.0, 8.0, 8.0]
        );
        assert_eq!((batch.seq_len(), batch.batch_size()), (5, 5));
        // The shared prefix is unchanged.
        assert_eq!((cache.seq_len(), cache.batch_size()), (3, 1));
    }

    #[test]
    fn other_batch_mismatches_are_errors() {
        let mut cache = KvCache::new();
        cache
            .append(0, filled(2, 3, 1.0), filled(2, 3, 1.0))
            .unwrap();
        assert!(cache
            .append(0, filled(3, 1, 1.0), filled(3, 1, 1.0))
            .is_err());
    }
}
