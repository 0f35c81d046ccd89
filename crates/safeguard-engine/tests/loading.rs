//! Checkpoint loading: weight files, layouts, dtypes, clear errors, LoRA.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safeguard_engine::weights::{find_weights, load_config, WeightFiles};
use safeguard_engine::{load_model, EngineError, LoadOptions, LoraMode};
use safeguard_model::lora::{LoraAdapter, LoraConfig};
use safeguard_model::qwen2_5_vl::{
    ConfigLayout, KvCache, Logits, Prompt, Qwen2_5VlModel, VisionInputs, WeightLayout,
};

use crate::common::{fixtures, npy, rel_max_diff};
use crate::parity::read_case;

/// Copies the config of `variant` and writes its tensors, changed by `edit`, as one file.
fn edited_copy(
    variant: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let src = fixtures().join(variant);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = HashMap::new();
    for path in find_weights(&src).unwrap().paths() {
        tensors.extend(candle_core::safetensors::load(&path, &Device::Cpu).unwrap());
    }
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors")).unwrap();
    tmp
}

fn load_err(dir: &Path) -> String {
    format!(
        "{:#}",
        anyhow::Error::from(load_model(dir, &LoadOptions::default()).unwrap_err())
    )
}

#[test]
fn layouts_are_detected_from_config_and_tensor_names() {
    let a = load_model(&fixtures().join("tiny-a"), &LoadOptions::default()).unwrap();
    assert_eq!(
        (a.config.layout, a.layout),
        (ConfigLayout::Nested, WeightLayout::Nested)
    );
    assert!(!a.config.tie_word_embeddings);
    let b = load_model(&fixtures().join("tiny-b"), &LoadOptions::default()).unwrap();
    assert_eq!(
        (b.config.layout, b.layout),
        (ConfigLayout::Flat, WeightLayout::Legacy)
    );
    assert!(b.config.tie_word_embeddings);
    assert_eq!(b.config.text_config.mrope_section, vec![1, 1, 2]);
    assert_eq!(b.config.text_config.rope_theta, 1e6);
    match find_weights(&fixtures().join("tiny-b")).unwrap() {
        WeightFiles::Sharded { shards, .. } => assert_eq!(shards.len(), 2),
        other => panic!("expected shards, got {other:?}"),
    }
}

#[test]
fn missing_tensor_is_named() {
    let name = "model.language_model.layers.1.self_attn.k_proj.bias";
    let tmp = edited_copy("tiny-a", |t| {
        t.remove(name).unwrap();
    });
    let msg = load_err(tmp.path());
    assert!(msg.contains(name), "{msg}");
}

#[test]
fn mis_shaped_tensor_is_named_with_both_shapes() {
    let name = "model.visual.blocks.2.mlp.up_proj.weight";
    let tmp = edited_copy("tiny-a", |t| {
        t.insert(
            name.to_string(),
            Tensor::zeros((47, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(tmp.path());
    assert!(msg.contains(name) && msg.contains("47"), "{msg}");
}

#[test]
fn missing_shard_and_missing_weights_are_clear() {
    let src = fixtures().join("tiny-b");
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let msg = load_err(tmp.path());
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
    std::fs::remove_file(tmp.path().join("model.safetensors.index.json")).unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("index"),
        "{msg}"
    );
    let err = load_config(&tmp.path().join("nowhere")).unwrap_err();
    assert!(matches!(err, EngineError::MissingFile { .. }));
}

#[test]
fn bf16_and_f16_loads_stay_close_to_the_f32_reference() {
    let dir = fixtures().join("tiny-a");
    let cdir = dir.join("cases").join("one_image");
    let c = read_case(&cdir);
    for dtype in [DType::BF16, DType::F16] {
        let model = load_model(
            &dir,
            &LoadOptions {
                dtype,
                ..Default::default()
            },
        )
        .unwrap()
        .model;
        assert_eq!(model.dtype(), dtype);
        let e = model
            .embed_images(&VisionInputs {
                pixel_values: c.pixels.clone().unwrap(),
                grid_thw: c.grids.clone(),
            })
            .unwrap();
        let prompt = Prompt {
            input_ids: &c.ids,
            grids: &c.grids,
            image_embeds: Some(&e),
        };
        let logits = model
            .forward(&prompt, &mut KvCache::new(), Logits::Last)
            .unwrap();
        let d = rel_max_diff(&logits, &npy(cdir.join("logits.npy")));
        eprintln!("{dtype:?}: logits rel max diff {d:.2e}");
        // Half precision through 2 + 3 random layers: a loose, documented bound (docs/model.md).
        assert!(d < 0.05, "{dtype:?}: logits differ by {d}");
    }
}

#[test]
fn merged_lora_matches_peft_merge_and_unload() {
    let dir = fixtures().join("tiny-a");
    let opts = LoadOptions {
        lora: Some(dir.join("lora")),
        ..Default::default()
    };
    let model = load_model(&dir, &opts).unwrap().model;
    let base = load_model(&dir, &LoadOptions::default()).unwrap().model;
    for case in ["text", "one_image"] {
        let c = read_case(&dir.join("cases").join(case));
        let run = |m: &Qwen2_5VlModel| {
            let e = c.pixels.as_ref().map(|p| {
                m.embed_images(&VisionInputs {
                    pixel_values: p.clone(),
                    grid_thw: c.grids.clone(),
                })
                .unwrap()
            });
            let prompt = Prompt {
                input_ids: &c.ids,
                grids: &c.grids,
                image_embeds: e.as_ref(),
            };
            m.forward(&prompt, &mut KvCache::new(), Logits::Last)
                .unwrap()
        };
        let expected = npy(dir
            .join("lora")
            .join("cases")
            .join(case)
            .join("logits_merged.npy"));
        let d = rel_max_diff(&run(&model), &expected);
        eprintln!("lora/{case}: logits rel max diff {d:.2e}");
        assert!(d <= 1e-4, "lora/{case}: {d}");
        // The adapter must actually change the output.
        assert!(rel_max_diff(&run(&base), &expected) > 1e-2);
    }
}

#[test]
fn separate_lora_matches_peft_and_detaches_back_to_the_base() {
    let dir = fixtures().join("tiny-a");
    let opts = LoadOptions {
        lora: Some(dir.join("lora")),
        lora_mode: LoraMode::Separate,
        ..Default::default()
    };
    let mut model = load_model(&dir, &opts).unwrap().model;
    let c = read_case(&dir.join("cases").join("one_image"));
    let run = |m: &Qwen2_5VlModel| {
        let inputs = VisionInputs {
            pixel_values: c.pixels.clone().unwrap(),
            grid_thw: c.grids.clone(),
        };
        let e = m.embed_images(&inputs).unwrap();
        let prompt = Prompt {
            input_ids: &c.ids,
            grids: &c.grids,
            image_embeds: Some(&e),
        };
        m.forward(&prompt, &mut KvCache::new(), Logits::Last)
            .unwrap()
    };
    let merged = npy(dir.join("lora/cases/one_image/logits_merged.npy"));
    let d = rel_max_diff(&run(&model), &merged);
    eprintln!("separate lora/one_image: logits rel max diff {d:.2e}");
    assert!(d <= 1e-4, "{d}");
    model.detach_lora();
    let d = rel_max_diff(&run(&model), &npy(dir.join("cases/one_image/logits.npy")));
    assert!(d <= 1e-4, "after detach: {d}");
}

#[test]
fn separate_lora_on_a_non_projection_is_rejected() {
    let dir = fixtures().join("tiny-a");
    let mut model = load_model(&dir, &LoadOptions::default()).unwrap().model;
    let cfg = r#"{"r": 2, "lora_alpha": 4, "target_modules": ["lm_head"]}"#;
    let cfg = LoraConfig::from_json_str(cfg).unwrap();
    let zeros = |shape: (usize, usize)| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let tensors = HashMap::from([
        (
            "base_model.model.lm_head.lora_A.weight".to_string(),
            zeros((2, 64)),
        ),
        (
            "base_model.model.lm_head.lora_B.weight".to_string(),
            zeros((512, 2)),
        ),
    ]);
    let adapter = LoraAdapter::new(&cfg, tensors, WeightLayout::Nested).unwrap();
    let err = model.attach_lora(&adapter).unwrap_err().to_string();
    assert!(err.contains("lm_head.weight"), "{err}");
}

#[test]
fn lora_targeting_a_missing_module_is_an_error() {
    let dir = fixtures().join("tiny-a");
    // tiny-b has 3 text layers; tiny-a's adapter fits, but point tiny-a's adapter at a model
    // whose layer 1 lacks q_proj.
    let name = "model.language_model.layers.1.self_attn.q_proj.weight";
    let tmp = edited_copy("tiny-a", |t| {
        t.remove(name).unwrap();
    });
    let opts = LoadOptions {
        lora: Some(dir.join("lora")),
        ..Default::default()
    };
    let msg = format!(
        "{:#}",
        anyhow::Error::from(load_model(tmp.path(), &opts).unwrap_err())
    );
    assert!(msg.contains(name), "{msg}");
}
