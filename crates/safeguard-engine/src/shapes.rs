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
//! constant, candle's default initialisers) the first time the constructor asks for it;
//! [`save_random_model`] writes such a model as a checkpoint directory
//! (`safeguard debug random-model`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use safeguard_model::qwen2_5_vl::{Config, Qwen2_5VlModel, WeightLayout};
use safeguard_vision::PreprocessConfig;
use serde_json::{json, Value};

use crate::tokenizer::QwenTokenizer;
use crate::weights::LoadedModel;
use crate::EngineError;

/// The shape names [`named_shape`] knows.
pub const SHAPES: &[&str] = &["tiny", "small", "7b"];

/// The `config.json` of a named shape (see the module docs), with the released checkpoints'
/// special token ids and the 151,936-token vocabulary (152,064 for `7b`, 1,024 for `tiny`).
pub fn named_shape(name: &str) -> Result<Config, EngineError> {
    shape_config(name, &named_shape_json(name)?)
}

/// Parses the `config.json` value of shape `name`.
fn shape_config(name: &str, value: &Value) -> Result<Config, EngineError> {
    Config::from_json_str(&value.to_string()).map_err(|e| EngineError::Input {
        reason: format!("shape `{name}`: {e}"),
    })
}

/// [`named_shape`] as the JSON of a `config.json` (the `qwen2_5_vl` legacy layout).
pub fn named_shape_json(name: &str) -> Result<Value, EngineError> {
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
    Ok(value)
}

/// Makes `cfg` usable with `tokenizer`: the image and vision-bracket ids become the
/// tokenizer's, and the vocabulary grows (never shrinks) to cover every id it can produce.
pub fn fit_tokenizer(cfg: &mut Config, tokenizer: &QwenTokenizer) {
    let fit = Fit::of(tokenizer, cfg.text_config.vocab_size);
    cfg.image_token_id = fit.image_pad;
    cfg.vision_start_token_id = fit.vision_start;
    cfg.vision_end_token_id = fit.vision_end;
    cfg.text_config.vocab_size = fit.vocab_size;
}

/// [`fit_tokenizer`] on the JSON of a `config.json` (legacy layout).
pub fn fit_tokenizer_json(value: &mut Value, tokenizer: &QwenTokenizer) {
    let vocab = value["vocab_size"].as_u64().unwrap_or(0) as usize;
    let fit = Fit::of(tokenizer, vocab);
    value["image_token_id"] = fit.image_pad.into();
    value["vision_start_token_id"] = fit.vision_start.into();
    value["vision_end_token_id"] = fit.vision_end.into();
    value["vocab_size"] = fit.vocab_size.into();
}

/// The ids and vocabulary size a config needs for a tokenizer.
struct Fit {
    image_pad: u32,
    vision_start: u32,
    vision_end: u32,
    vocab_size: usize,
}

impl Fit {
    fn of(tokenizer: &QwenTokenizer, vocab_size: usize) -> Self {
        let special = tokenizer.special();
        let highest = [special.image_pad, special.vision_start, special.vision_end]
            .into_iter()
            .max()
            .unwrap_or(0) as usize;
        Self {
            image_pad: special.image_pad,
            vision_start: special.vision_start,
            vision_end: special.vision_end,
            vocab_size: vocab_size.max(tokenizer.vocab_size()).max(highest + 1),
        }
    }
}

/// Writes a checkpoint directory of shape `name` with random weights: `config.json` (fitted to
/// `tokenizer`), `model.safetensors` in `dtype`, a copy of `tokenizer.json` and the default
/// `preprocessor_config.json`. Loads like a downloaded checkpoint (for serving benchmarks and
/// tests that need a model directory of a given size).
pub fn save_random_model(
    name: &str,
    tokenizer_path: &Path,
    dtype: DType,
    out: &Path,
) -> Result<(), EngineError> {
    let tokenizer = QwenTokenizer::from_file(tokenizer_path)?;
    let mut value = named_shape_json(name)?;
    fit_tokenizer_json(&mut value, &tokenizer);
    let cfg = shape_config(name, &value)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    Qwen2_5VlModel::new(&cfg, WeightLayout::Legacy, vb)?;
    let io = |path: &Path, e: std::io::Error| EngineError::Input {
        reason: format!("cannot write {}: {e}", path.display()),
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let write = |file: &str, text: String| {
        let path = out.join(file);
        std::fs::write(&path, text).map_err(|e| io(&path, e))
    };
    value["torch_dtype"] = dtype_name(dtype).into();
    write("config.json", format!("{value:#}\n"))?;
    let pre = PreprocessConfig::default();
    let preprocessor = json!({
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": pre.min_pixels, "max_pixels": pre.max_pixels,
        "patch_size": pre.patch_size, "temporal_patch_size": pre.temporal_patch_size,
        "merge_size": pre.merge_size, "image_mean": pre.image_mean, "image_std": pre.image_std,
    });
    write("preprocessor_config.json", format!("{preprocessor:#}\n"))?;
    let target = out.join("tokenizer.json");
    std::fs::copy(tokenizer_path, &target).map_err(|e| io(&target, e))?;
    varmap.save(out.join("model.safetensors"))?;
    Ok(())
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
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
    Qwen2_5VlModel::new(cfg, WeightLayout::Legacy, vb)?;
    // Rebuild from the same storage as plain tensors: `Var` weights would make every op
    // record a graph and the layers take their (slower) differentiable paths.
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = varmap
        .data()
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let model = Qwen2_5VlModel::new(cfg, WeightLayout::Legacy, vb)?;
    Ok(LoadedModel {
        model,
        config: cfg.clone(),
        layout: WeightLayout::Legacy,
        dir: PathBuf::from(format!("<random {name}>")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_models_hold_plain_tensors_not_vars() {
        let cfg = named_shape("tiny").unwrap();
        let loaded = random_model(&cfg, "tiny", DType::F32, &Device::Cpu).unwrap();
        // A Var weight would send inference through the differentiable layer paths.
        assert!(!loaded.model.lm_head_weight().track_op());
        assert!(!loaded.model.lm_head_weight().is_variable());
    }
}
