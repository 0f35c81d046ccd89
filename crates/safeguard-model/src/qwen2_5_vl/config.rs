//! `config.json` of a Qwen2.5-VL checkpoint.
//!
//! Python reference: `transformers.Qwen2_5_VLConfig`, `Qwen2_5_VLTextConfig` and
//! `Qwen2_5_VLVisionConfig` in
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen2_5_vl/configuration_qwen2_5_vl.py>.
//!
//! Two layouts exist in the wild, named by [`ConfigLayout`]:
//! - **flat** (checkpoints published with transformers 4.49–4.51, e.g. `Qwen/Qwen2.5-VL-7B-Instruct`):
//!   the text-model keys sit at the top level, with `rope_theta` and
//!   `rope_scaling = {"type": "mrope", "mrope_section": [..]}`;
//! - **nested** (transformers ≥ 4.52 / 5.x `save_pretrained`): the text keys live in
//!   `text_config`, with `rope_parameters = {"rope_theta", "mrope_section", "rope_type"}`.
//!
//! Keys that appear twice (`in_chans` and `in_channels`, text keys at the top level and in
//! `text_config`, `torch_dtype` and `dtype`, `rope_scaling` and `rope_parameters`) are checked
//! for agreement and merged first (`config_keys`); unknown keys are ignored.
//!
//! [`Config::from_json_str`] inspects the presence of `text_config`, parses the matching
//! layout and records which one it was in [`Config::layout`]. Defaults are those of the Python
//! classes and are applied only where transformers has one.

use candle_nn::Activation;
use serde::Deserialize;

use crate::ModelError;

/// The `model_type` values this crate can run, as a serde-tagged enum (dispatch on the tag, not
/// on strings).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type")]
#[non_exhaustive]
pub enum ModelConfig {
    /// `Qwen2_5_VLForConditionalGeneration`.
    #[serde(rename = "qwen2_5_vl")]
    Qwen2_5Vl(Config),
}

/// Which of the two `config.json` layouts a checkpoint used (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigLayout {
    /// Text keys at the top level, `rope_scaling` + `rope_theta`.
    Flat,
    /// Text keys under `text_config`, `rope_parameters`.
    Nested,
}

/// The whole model configuration, normalised from either layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Config {
    /// The language model.
    pub text_config: TextConfig,
    /// The vision tower.
    pub vision_config: VisionConfig,
    /// `<|image_pad|>` (151655 in the released checkpoints).
    pub image_token_id: u32,
    /// `<|video_pad|>` (151656).
    pub video_token_id: u32,
    /// `<|vision_start|>` (151652).
    pub vision_start_token_id: u32,
    /// `<|vision_end|>` (151653).
    pub vision_end_token_id: u32,
    /// Whether `lm_head` reuses `embed_tokens` (true if set at the top level or in
    /// `text_config`, as `Qwen2_5_VLConfig.__post_init__` does).
    pub tie_word_embeddings: bool,
    /// The layout the file used.
    pub layout: ConfigLayout,
    /// The checkpoint's stored dtype (`dtype`, or the older `torch_dtype`), e.g. `bfloat16`.
    pub dtype: Option<String>,
}

/// Top-level keys other than the text model's.
#[derive(Debug, Deserialize)]
struct TopLevel {
    vision_config: VisionConfig,
    #[serde(default = "default_image_token_id")]
    image_token_id: u32,
    #[serde(default = "default_video_token_id")]
    video_token_id: u32,
    #[serde(default = "default_vision_start_token_id")]
    vision_start_token_id: u32,
    #[serde(default = "default_vision_end_token_id")]
    vision_end_token_id: u32,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    dtype: Option<String>,
}

/// The Qwen2 decoder (`Qwen2_5_VLTextConfig`), after the RoPE keys of both layouts have been
/// resolved.
#[derive(Debug, Clone)]
pub struct TextConfig {
    /// Vocabulary size (rows of `embed_tokens` and `lm_head`).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA: divides `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// MLP activation (`silu` in every released checkpoint).
    pub hidden_act: Activation,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Rotary half-dimensions given to the temporal, height and width position axes; sums to
    /// `head_dim / 2`.
    pub mrope_section: Vec<usize>,
    /// End-of-sequence ids from the config (may be empty).
    pub eos_token_id: Vec<u32>,
    /// `tie_word_embeddings` as written in this section (nested layout only).
    tie_word_embeddings: bool,
}

impl TextConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The raw text keys as written in either layout.
#[derive(Debug, Deserialize)]
struct RawText {
    #[serde(default = "default_vocab_size")]
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_act")]
    hidden_act: Activation,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

/// `rope_scaling` (flat) or `rope_parameters` (nested).
#[derive(Debug, Clone, Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
    mrope_section: Option<Vec<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// The vision tower (`Qwen2_5_VLVisionConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Number of transformer blocks.
    #[serde(default = "default_vision_depth")]
    pub depth: usize,
    /// Width of the blocks.
    #[serde(default = "default_vision_hidden")]
    pub hidden_size: usize,
    /// MLP activation (`silu`).
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// SwiGLU inner width.
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: usize,
    /// Attention heads.
    #[serde(default = "default_vision_heads")]
    pub num_heads: usize,
    /// Input channels (3); older files call it `in_chans` (merged into this name, checked
    /// against it when both are present, before parsing).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Patch side in pixels (14).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Patches merged per side into one LLM token (2).
    #[serde(default = "default_spatial_merge")]
    pub spatial_merge_size: usize,
    /// Frames per temporal patch (2; a still image is repeated).
    #[serde(default = "default_temporal_patch")]
    pub temporal_patch_size: usize,
    /// Window side in pixels for window attention (112).
    #[serde(default = "default_window_size")]
    pub window_size: usize,
    /// Output width of the merger (= the LLM width).
    #[serde(default = "default_out_hidden")]
    pub out_hidden_size: usize,
    /// Blocks that attend over the whole image instead of windows.
    #[serde(default = "default_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    /// Video only: temporal position scale; kept for completeness.
    #[serde(default = "default_tokens_per_second")]
    pub tokens_per_second: usize,
    /// `rope_parameters` of the vision rotary embedding (only `rope_theta` is read).
    #[serde(default)]
    rope_parameters: Option<RawRope>,
}

impl VisionConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// RoPE base of the 2-D rotary embedding (10000 unless the file says otherwise).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .unwrap_or(10000.0)
    }
    /// Values per patch in `pixel_values`: channels × temporal × patch × patch (1176).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

impl Config {
    /// Parses a `config.json` of either layout, checking the invariants the model relies on.
    pub fn from_json_str(json: &str) -> Result<Self, ModelError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(ModelError::ConfigJson)?;
        Self::try_from(value)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let bad = |field: &str, reason: String| {
            Err(ModelError::Config {
                field: field.to_string(),
                reason,
            })
        };
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return bad(
                "num_attention_heads",
                format!("must divide hidden_size {}", t.hidden_size),
            );
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                format!("must divide num_attention_heads {}", t.num_attention_heads),
            );
        }
        let half = t.head_dim() / 2;
        if t.mrope_section.len() != 3 || t.mrope_section.iter().sum::<usize>() != half {
            return bad(
                "mrope_section",
                format!(
                    "{:?} must be 3 numbers summing to head_dim/2 = {half}",
                    t.mrope_section
                ),
            );
        }
        if v.num_heads == 0
            || !v.hidden_size.is_multiple_of(v.num_heads)
            || !v.head_dim().is_multiple_of(4)
        {
            return bad(
                "vision_config.num_heads",
                "must divide hidden_size into heads of a multiple of 4".into(),
            );
        }
        if v.out_hidden_size != t.hidden_size {
            return bad(
                "vision_config.out_hidden_size",
                format!(
                    "{} must equal the text hidden_size {}",
                    v.out_hidden_size, t.hidden_size
                ),
            );
        }
        let unit = v.spatial_merge_size * v.patch_size;
        if v.spatial_merge_size == 0 || v.window_size < unit || !v.window_size.is_multiple_of(unit)
        {
            return bad(
                "vision_config.window_size",
                format!(
                    "{} must be a multiple of spatial_merge_size × patch_size = {unit}",
                    v.window_size
                ),
            );
        }
        if let Some(i) = v.fullatt_block_indexes.iter().find(|&&i| i >= v.depth) {
            return bad(
                "vision_config.fullatt_block_indexes",
                format!("index {i} is not below depth {}", v.depth),
            );
        }
        Ok(())
    }
}

impl TryFrom<serde_json::Value> for Config {
    type Error = ModelError;

    fn try_from(mut value: serde_json::Value) -> Result<Self, ModelError> {
        super::config_keys::normalize(&mut value)?;
        let top: TopLevel =
            serde_json::from_value(value.clone()).map_err(ModelError::ConfigJson)?;
        let (layout, raw_text) = match value.get("text_config") {
            Some(text) => (ConfigLayout::Nested, text.clone()),
            None => (ConfigLayout::Flat, value),
        };
        let raw: RawText = serde_json::from_value(raw_text).map_err(ModelError::ConfigJson)?;
        let text_config = TextConfig::from_raw(raw);
        let cfg = Config {
            tie_word_embeddings: top.tie_word_embeddings || text_config.tie_word_embeddings,
            text_config,
            vision_config: top.vision_config,
            image_token_id: top.image_token_id,
            video_token_id: top.video_token_id,
            vision_start_token_id: top.vision_start_token_id,
            vision_end_token_id: top.vision_end_token_id,
            layout,
            dtype: top.dtype,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl TextConfig {
    fn from_raw(raw: RawText) -> Self {
        let rope = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(1_000_000.0);
        let mrope_section = rope
            .and_then(|r| r.mrope_section.clone())
            .unwrap_or_else(|| vec![16, 24, 24]);
        TextConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            hidden_act: raw.hidden_act,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            mrope_section,
            eos_token_id: match raw.eos_token_id {
                None => Vec::new(),
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            tie_word_embeddings: raw.tie_word_embeddings,
        }
    }
}

fn default_image_token_id() -> u32 {
    151655
}
fn default_video_token_id() -> u32 {
    151656
}
fn default_vision_start_token_id() -> u32 {
    151652
}
fn default_vision_end_token_id() -> u32 {
    151653
}
fn default_vocab_size() -> usize {
    152064
}
fn default_act() -> Activation {
    Activation::Silu
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_vision_depth() -> usize {
    32
}
fn default_vision_hidden() -> usize {
    3584
}
fn default_vision_intermediate() -> usize {
    3420
}
fn default_vision_heads() -> usize {
    16
}
fn default_in_channels() -> usize {
    3
}
fn default_patch_size() -> usize {
    14
}
fn default_spatial_merge() -> usize {
    2
}
fn default_temporal_patch() -> usize {
    2
}
fn default_window_size() -> usize {
    112
}
fn default_out_hidden() -> usize {
    3584
}
fn default_fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}
fn default_tokens_per_second() -> usize {
    4
}
