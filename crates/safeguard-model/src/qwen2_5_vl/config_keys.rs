//! Duplicate and unknown keys of a `config.json`, resolved before the typed parse.
//!
//! Configs re-saved by transformers ≥ 4.49 carry the same setting under several names:
//! `save_pretrained` writes unknown kwargs back, so a fine-tune of a release that said
//! `in_chans` holds both `in_chans` and `in_channels` in its `vision_config`; 4.52+ nests the
//! text model under `text_config` and may keep copies of its keys at the top level; v5 writes
//! `dtype` beside (or instead of) `torch_dtype`, and `rope_parameters` beside (or instead of)
//! `rope_scaling`. transformers reads one of each pair and ignores the other.
//!
//! [`normalize`] checks every such pair: duplicates that agree are merged into the name the
//! typed parser reads, duplicates that disagree are a [`ModelError::Config`] naming both keys
//! (a config whose copies disagree was edited by hand, and guessing which copy the author meant
//! would run a different model than the one they trained). Keys this crate does not read are
//! ignored and logged at debug level.
//!
//! Three settings are exempt, because transformers itself reconciles them: `tie_word_embeddings`
//! (true if either copy says so, as `Qwen2_5_VLConfig` does), `eos_token_id` (the text
//! section's copy is kept; `generation_config.json` is what decoding honours) and the dtype
//! across sections (transformers 4.52–5.x write a top-level `float32` beside a `text_config`
//! `bfloat16` when a model built from a bf16 config is saved; the top level's is kept).
//! `dtype` and `torch_dtype` within one section must still agree.

use serde_json::{Map, Value};

use crate::ModelError;

/// `(name read, older alias)` pairs of `vision_config`.
const VISION_ALIASES: &[(&str, &str)] = &[("in_channels", "in_chans")];

/// Keys of `vision_config` this crate reads or knowingly ignores.
const VISION_KEYS: &[&str] = &[
    "depth",
    "hidden_size",
    "hidden_act",
    "intermediate_size",
    "num_heads",
    "in_channels",
    "patch_size",
    "spatial_merge_size",
    "temporal_patch_size",
    "window_size",
    "out_hidden_size",
    "fullatt_block_indexes",
    "tokens_per_second",
    "rope_parameters",
    // Known and unused: written by every release.
    "model_type",
    "spatial_patch_size",
    "initializer_range",
    "torch_dtype",
    "dtype",
];

/// Text-model keys whose copies (top level and `text_config`) must agree.
const TEXT_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "rms_norm_eps",
    "rope_theta",
];

/// Text keys that are read with a reconciling rule instead of the agreement check.
const TEXT_RECONCILED: &[&str] = &["tie_word_embeddings", "eos_token_id"];

/// Text and top-level keys read, apart from [`TEXT_KEYS`], or known and unused.
const OTHER_KEYS: &[&str] = &[
    "model_type",
    "text_config",
    "vision_config",
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "rope_scaling",
    "rope_parameters",
    "torch_dtype",
    "dtype",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "layer_types",
    // Known and unused.
    "architectures",
    "transformers_version",
    "_name_or_path",
    "attention_dropout",
    "bos_token_id",
    "pad_token_id",
    "vision_token_id",
    "initializer_range",
    "max_position_embeddings",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
];

fn disagree(a: &str, va: &Value, b: &str, vb: &Value) -> ModelError {
    ModelError::Config {
        field: a.to_string(),
        reason: format!("is {va} but `{b}` is {vb}: the duplicate keys disagree, so it is unclear which model this is (remove the wrong one)"),
    }
}

/// Whether two JSON values say the same thing (numbers compared as numbers: `3` = `3.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

/// Merges `alias` into `name` inside `obj` (both names qualified by `section` in errors).
fn merge_alias(
    obj: &mut Map<String, Value>,
    section: &str,
    name: &str,
    alias: &str,
) -> Result<(), ModelError> {
    let Some(old) = obj.remove(alias) else {
        return Ok(());
    };
    match obj.get(name) {
        Some(new) if !same(new, &old) => Err(disagree(
            &format!("{section}{name}"),
            new,
            &format!("{section}{alias}"),
            &old,
        )),
        Some(_) => Ok(()),
        None => {
            obj.insert(name.to_string(), old);
            Ok(())
        }
    }
}

fn log_unknown(obj: &Map<String, Value>, section: &str, known: &[&[&str]]) {
    for key in obj.keys() {
        if !known.iter().any(|list| list.contains(&key.as_str())) {
            tracing::debug!(key = %format!("{section}{key}"), "config.json key not used");
        }
    }
}

/// The `mrope_section` and `rope_theta` of a rope section, checked against each other where
/// both `rope_scaling` and `rope_parameters` give them.
fn check_rope(obj: &Map<String, Value>, section: &str) -> Result<(), ModelError> {
    let (Some(Value::Object(scaling)), Some(Value::Object(params))) =
        (obj.get("rope_scaling"), obj.get("rope_parameters"))
    else {
        return Ok(());
    };
    for key in ["mrope_section", "rope_theta", "rope_type"] {
        if let (Some(a), Some(b)) = (params.get(key), scaling.get(key)) {
            if !same(a, b) {
                return Err(disagree(
                    &format!("{section}rope_parameters.{key}"),
                    a,
                    &format!("{section}rope_scaling.{key}"),
                    b,
                ));
            }
        }
    }
    Ok(())
}

/// Refuses settings transformers would honour but this crate does not implement, so that such
/// a checkpoint fails loudly instead of running with different positions or attention.
fn check_supported(obj: &Map<String, Value>, section: &str) -> Result<(), ModelError> {
    if obj.get("use_sliding_window") == Some(&Value::Bool(true)) {
        return Err(ModelError::Config {
            field: format!("{section}use_sliding_window"),
            reason: "is true: sliding-window attention is not implemented (no released Qwen2.5-VL checkpoint enables it)".into(),
        });
    }
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(Value::Object(rope)) = obj.get(key) else {
            continue;
        };
        for kind_key in ["rope_type", "type"] {
            if let Some(Value::String(kind)) = rope.get(kind_key) {
                if !matches!(kind.as_str(), "default" | "mrope") {
                    return Err(ModelError::Config {
                        field: format!("{section}{key}.{kind_key}"),
                        reason: format!("is `{kind}`: only the default (M-)RoPE is implemented, not scaled variants such as YaRN"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Resolves the duplicate keys of a whole `config.json` in place (see the module docs).
pub(super) fn normalize(value: &mut Value) -> Result<(), ModelError> {
    let Value::Object(top) = value else {
        return Ok(());
    };
    if let Some(Value::Object(vision)) = top.get_mut("vision_config") {
        for (name, alias) in VISION_ALIASES {
            merge_alias(vision, "vision_config.", name, alias)?;
        }
        merge_alias(vision, "vision_config.", "dtype", "torch_dtype")?;
        log_unknown(vision, "vision_config.", &[VISION_KEYS]);
    }
    merge_alias(top, "", "dtype", "torch_dtype")?;
    check_rope(top, "")?;
    check_supported(top, "")?;
    let top_copy = top.clone();
    if let Some(Value::Object(text)) = top.get_mut("text_config") {
        merge_alias(text, "text_config.", "dtype", "torch_dtype")?;
        check_rope(text, "text_config.")?;
        check_supported(text, "text_config.")?;
        for key in TEXT_KEYS {
            if let (Some(inner), Some(outer)) = (text.get(*key), top_copy.get(*key)) {
                if !same(inner, outer) {
                    return Err(disagree(&format!("text_config.{key}"), inner, key, outer));
                }
            }
        }
        // A top-level rope_theta or rope section must agree with the nested one.
        if let (Some(Value::Object(inner)), Some(Value::Object(outer))) =
            (text.get("rope_parameters"), top_copy.get("rope_parameters"))
        {
            for key in ["mrope_section", "rope_theta"] {
                if let (Some(a), Some(b)) = (inner.get(key), outer.get(key)) {
                    if !same(a, b) {
                        return Err(disagree(
                            &format!("text_config.rope_parameters.{key}"),
                            a,
                            &format!("rope_parameters.{key}"),
                            b,
                        ));
                    }
                }
            }
        }
        log_unknown(
            text,
            "text_config.",
            &[TEXT_KEYS, TEXT_RECONCILED, OTHER_KEYS],
        );
    }
    log_unknown(top, "", &[TEXT_KEYS, TEXT_RECONCILED, OTHER_KEYS]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agreeing_aliases_merge_and_disagreeing_ones_name_both_keys() {
        let mut v = json!({"vision_config": {"in_chans": 3, "in_channels": 3.0}});
        normalize(&mut v).unwrap();
        assert_eq!(v["vision_config"], json!({"in_channels": 3.0}));
        let mut v = json!({"vision_config": {"in_chans": 3}});
        normalize(&mut v).unwrap();
        assert_eq!(v["vision_config"]["in_channels"], json!(3));
        let mut v = json!({"vision_config": {"in_chans": 4, "in_channels": 3}});
        let err = normalize(&mut v).unwrap_err().to_string();
        assert!(
            err.contains("vision_config.in_channels") && err.contains("vision_config.in_chans"),
            "{err}"
        );
    }

    #[test]
    fn text_copies_and_dtypes_must_agree() {
        let mut v = json!({"hidden_size": 64, "text_config": {"hidden_size": 64}});
        normalize(&mut v).unwrap();
        let mut v = json!({"hidden_size": 32, "text_config": {"hidden_size": 64}});
        let err = normalize(&mut v).unwrap_err().to_string();
        assert!(
            err.contains("text_config.hidden_size") && err.contains("`hidden_size`"),
            "{err}"
        );
        let mut v = json!({"torch_dtype": "bfloat16", "dtype": "bfloat16"});
        normalize(&mut v).unwrap();
        let mut v = json!({"torch_dtype": "float16", "dtype": "bfloat16"});
        assert!(normalize(&mut v).is_err());
        // Across sections transformers itself writes different dtypes.
        let mut v = json!({"dtype": "float32", "text_config": {"dtype": "bfloat16"}});
        normalize(&mut v).unwrap();
        // Reconciled keys never disagree.
        let mut v = json!({"tie_word_embeddings": false, "eos_token_id": 1,
                           "text_config": {"tie_word_embeddings": true, "eos_token_id": [1, 2]}});
        normalize(&mut v).unwrap();
    }

    #[test]
    fn rope_sections_must_agree_and_scaled_rope_is_refused() {
        let mut v = json!({"rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
                           "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}});
        normalize(&mut v).unwrap();
        let mut v = json!({"rope_scaling": {"mrope_section": [2, 3, 3]},
                           "rope_parameters": {"mrope_section": [3, 3, 2]}});
        assert!(normalize(&mut v).is_err());
        let mut v = json!({"text_config": {"rope_parameters": {"rope_type": "yarn"}}});
        let err = normalize(&mut v).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
        let mut v = json!({"use_sliding_window": true});
        assert!(normalize(&mut v).is_err());
        let mut v = json!({"use_sliding_window": false, "sliding_window": 32768});
        normalize(&mut v).unwrap();
    }
}
