//! Named Qwen2.5-VL shapes with random weights, for benchmarks that need no checkpoint
//! (`safeguard bench --shape`).
//!
//! - `tiny`: the test-fixture widths (text 32 × 2 layers, vision 16 × 2 blocks, a 1,024-token
//!   vocabulary that [`fit_tokenizer`] grows to the tokenizer's);
//! - `small`: the Qwen2.5-0.5B text stack (896 × 24 layers, 14 heads / 2 KV heads, SwiGLU
//!   4864, tied head) under an 8-block vision tower of the 7B's width (1280, 16 heads, full
//!   attention at blocks 3 and 7, window 112);
//! - `7b`: the released Qwen2.5-VL-7B-Instruct `config.json`.
//!
//! [`random_model`] builds the model from a `VarMap`, which creates each weight (random or
//! constant, candle's default initialisers) the first time the constructor asks for it.

use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use safeguard_model::qwen2_5_vl::{Config, Qwen2_5VlModel, WeightLayout};
use serde_json::json;

use crate::tokenizer::QwenTokenizer;
use crate::weights::LoadedModel;
use crate::EngineError;

/// The shape names [`named_shape`] knows.
pub const SHAPES: &[&str] = &["tiny", "small", "7b"];

/// The `config.json` of a named shape (see the module docs), with the released checkpoints'
/// special token ids and the 151,936-token vocabulary (152,064 for `7b`, 1,024 for `tiny`).
pub fn named_shape(name: &str) -> Result<Config, EngineError> {
    let (text, vision, tie) = match name {
        "tiny" => (
            json!({"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
                   "rms_norm_eps": 1e-6,
                   "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
                   "rope_theta": 10000.0}),
            json!({"depth": 2, "hidden_size": 16, "intermediate_size": 24, "num_heads": 2,
                   "out_hidden_size": 32, "window_size": 56, "fullatt_block_indexes": [1]}),
            true,
        ),
        "small" => (
            json!({"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                   "rms_norm_eps": 1e-6,
                   "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
                   "rope_theta": 1000000.0}),
            json!({"depth": 8, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "out_hidden_size": 896, "window_size": 112, "fullatt_block_indexes": [3, 7]}),
            true,
        ),
        "7b" => (
            json!({"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "rms_norm_eps": 1e-6,
                   "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                   "rope_theta": 1000000.0}),
            json!({"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "out_hidden_size": 3584, "window_size": 112,
                   "fullatt_block_indexes": [7, 15, 23, 31]}),
            false,
        ),
        other => {
            return Err(EngineError::Input {
                reason: format!("unknown shape `{other}`: use one of {}", SHAPES.join(", ")),
            })
        }
    };
    let mut value = text;
    value["model_type"] = "qwen2_5_vl".into();
    value["vision_config"] = vision;
    value["tie_word_embeddings"] = tie.into();
    value["image_token_id"] = 151655.into();
    value["video_token_id"] = 151656.into();
    value["vision_start_token_id"] = 151652.into();
    value["vision_end_token_id"] = 151653.into();
    Config::from_json_str(&value.to_string()).map_err(|e| EngineError::Input {
        reason: format!("shape `{name}`: {e}"),
    })
}

/// Makes `cfg` usable with `tokenizer`: the image and vision-bracket ids become the
/// tokenizer's, and the vocabulary grows (never shrinks) to cover every id it can produce.
pub fn fit_tokenizer(cfg: &mut Config, tokenizer: &QwenTokenizer) {
    let special = tokenizer.special();
    cfg.image_token_id = special.image_pad;
    cfg.vision_start_token_id = special.vision_start;
    cfg.vision_end_token_id = special.vision_end;
    let highest = [special.image_pad, special.vision_start, special.vision_end]
        .into_iter()
        .max()
        .unwrap_or(0) as usize;
    let t = &mut cfg.text_config;
    t.vocab_size = t.vocab_size.max(tokenizer.vocab_size()).max(highest + 1);
}

/// A model of shape `cfg` with freshly initialised weights in `dtype` on `device`; `name`
/// becomes its `dir` (`<random NAME>`) in messages.
pub fn random_model(
    cfg: &Config,
    name: &str,
    dtype: DType,
    device: &Device,
) -> Result<LoadedModel, EngineError> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    let model = Qwen2_5VlModel::new(cfg, WeightLayout::Legacy, vb)?;
    Ok(LoadedModel {
        model,
        config: cfg.clone(),
        layout: WeightLayout::Legacy,
        dir: PathBuf::from(format!("<random {name}>")),
    })
}
