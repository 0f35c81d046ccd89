//! `config.json` parsing: both layouts, defaults, validation errors.

use safeguard_model::qwen2_5_vl::{Config, ConfigLayout, ModelConfig};
use safeguard_model::ModelError;

/// The flat layout as published in `Qwen/Qwen2.5-VL-7B-Instruct` (abridged: keys the model
/// does not read are kept where they exercise unknown-key tolerance).
const FLAT_7B: &str = r#"{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
  "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
  "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
  "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
  "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl",
  "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.41.2",
  "use_cache": true, "use_sliding_window": false,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
    "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
    "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vocab_size": 152064
}"#;

/// The nested layout of transformers 5 (`save_pretrained`), 3B-like with tied embeddings.
const NESTED: &str = r#"{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
  "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
  "vision_end_token_id": 151653,
  "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
    "num_attention_heads": 16, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "vocab_size": 151936, "tie_word_embeddings": true, "eos_token_id": [151645, 151643],
    "model_type": "qwen2_5_vl_text",
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}},
  "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "out_hidden_size": 2048, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}}
}"#;

#[test]
fn flat_7b_layout_parses() {
    let cfg = Config::from_json_str(FLAT_7B).unwrap();
    assert_eq!(cfg.layout, ConfigLayout::Flat);
    let t = &cfg.text_config;
    assert_eq!(
        (
            t.hidden_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.num_key_value_heads
        ),
        (3584, 28, 28, 4)
    );
    assert_eq!(t.head_dim(), 128);
    assert_eq!(t.mrope_section, vec![16, 24, 24]);
    assert_eq!(t.rope_theta, 1e6);
    assert_eq!(t.eos_token_id, vec![151645]);
    let v = &cfg.vision_config;
    assert_eq!(
        (v.depth, v.hidden_size, v.in_channels, v.patch_dim()),
        (32, 1280, 3, 1176)
    );
    assert_eq!(v.rope_theta(), 10000.0);
    assert_eq!(
        (
            cfg.image_token_id,
            cfg.vision_start_token_id,
            cfg.vision_end_token_id
        ),
        (151655, 151652, 151653)
    );
    assert!(!cfg.tie_word_embeddings);
}

#[test]
fn nested_layout_parses_and_ties_from_text_config() {
    let cfg = Config::from_json_str(NESTED).unwrap();
    assert_eq!(cfg.layout, ConfigLayout::Nested);
    assert!(
        cfg.tie_word_embeddings,
        "text_config.tie_word_embeddings must propagate"
    );
    assert_eq!(cfg.text_config.num_key_value_heads, 2);
    assert_eq!(cfg.text_config.eos_token_id, vec![151645, 151643]);
    assert_eq!(cfg.text_config.rms_norm_eps, 1e-6);
}

#[test]
fn model_type_tag_dispatches_and_rejects_others() {
    let parsed: ModelConfig = serde_json::from_str(FLAT_7B).unwrap();
    assert!(matches!(parsed, ModelConfig::Qwen2_5Vl(_)));
    let other = FLAT_7B.replace(
        "\"model_type\": \"qwen2_5_vl\"",
        "\"model_type\": \"llava\"",
    );
    let err = serde_json::from_str::<ModelConfig>(&other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("llava"), "{err}");
}

#[test]
fn inconsistent_values_name_the_field() {
    let bad = FLAT_7B.replace("[16, 24, 24]", "[16, 24, 20]");
    match Config::from_json_str(&bad) {
        Err(ModelError::Config { field, .. }) => assert_eq!(field, "mrope_section"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let bad = FLAT_7B.replace("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 5");
    assert!(
        matches!(Config::from_json_str(&bad), Err(ModelError::Config { field, .. }) if field == "num_key_value_heads")
    );
    let bad = FLAT_7B.replace("\"hidden_size\": 3584,", "");
    let err = Config::from_json_str(&bad).unwrap_err().to_string();
    assert!(err.contains("hidden_size"), "{err}");
}

/// A fine-tune re-saved by transformers 4.5x (modelled on public 3B/7B fine-tunes saved with
/// 4.52.4 and 4.54.0): both `in_chans` and `in_channels`, `text_config` plus top-level copies of
/// its keys, `torch_dtype` and `dtype`, `rope_scaling` with both `type` and `rope_type`, and
/// `tie_word_embeddings` only inside `text_config`.
const RESAVED_4_5X: &str = r#"{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
  "_name_or_path": "/data/ckpt/qwen25vl-3b-guard", "transformers_version": "4.52.4",
  "torch_dtype": "bfloat16", "dtype": "bfloat16",
  "hidden_size": 2048, "num_hidden_layers": 36, "vocab_size": 151936, "rms_norm_eps": 1e-06,
  "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
  "vision_end_token_id": 151653,
  "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
    "num_attention_heads": 16, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "vocab_size": 151936, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "rope_theta": 1000000.0, "use_sliding_window": false, "sliding_window": 32768,
    "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}},
  "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "in_chans": 3, "in_channels": 3, "spatial_patch_size": 14, "out_hidden_size": 2048,
    "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112, "torch_dtype": "bfloat16"}
}"#;

#[test]
fn resaved_configs_with_agreeing_duplicates_load() {
    let cfg = Config::from_json_str(RESAVED_4_5X).unwrap();
    assert_eq!(cfg.layout, ConfigLayout::Nested);
    assert_eq!(cfg.vision_config.in_channels, 3);
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.text_config.mrope_section, vec![16, 24, 24]);
    assert_eq!(cfg.dtype.as_deref(), Some("bfloat16"));
}

#[test]
fn disagreeing_duplicates_name_both_keys() {
    for (from, to, keys) in [
        (
            "\"in_channels\": 3",
            "\"in_channels\": 4",
            ["vision_config.in_channels", "vision_config.in_chans"],
        ),
        (
            "\"hidden_size\": 2048, \"num_hidden_layers\": 36, \"vocab_size\"",
            "\"hidden_size\": 1024, \"num_hidden_layers\": 36, \"vocab_size\"",
            ["text_config.hidden_size", "`hidden_size`"],
        ),
        (
            "\"dtype\": \"bfloat16\"",
            "\"dtype\": \"float32\"",
            ["dtype", "torch_dtype"],
        ),
    ] {
        let bad = RESAVED_4_5X.replacen(from, to, 1);
        assert_ne!(bad, RESAVED_4_5X, "{from}");
        let err = Config::from_json_str(&bad).unwrap_err().to_string();
        for key in keys {
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}

#[test]
fn unimplemented_rope_and_attention_variants_are_refused() {
    let yarn = RESAVED_4_5X.replace(
        "\"rope_type\": \"default\", \"type\": \"default\"",
        "\"rope_type\": \"yarn\", \"factor\": 4.0",
    );
    let err = Config::from_json_str(&yarn).unwrap_err().to_string();
    assert!(err.contains("yarn"), "{err}");
    let sliding = RESAVED_4_5X.replace(
        "\"use_sliding_window\": false",
        "\"use_sliding_window\": true",
    );
    let err = Config::from_json_str(&sliding).unwrap_err().to_string();
    assert!(err.contains("use_sliding_window"), "{err}");
}
