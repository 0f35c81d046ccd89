//! Shape tests on a tiny config with in-memory weights, and the weight-naming contract.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use safeguard_model::qwen2_5_vl::{
    Config, KvCache, Logits, Prompt, Qwen2_5VlModel, VisionInputs, WeightLayout,
};

const TINY: &str = r#"{
  "model_type": "qwen2_5_vl", "image_token_id": 60, "video_token_id": 61,
  "vision_start_token_id": 62, "vision_end_token_id": 63,
  "text_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
    "rope_parameters": {"rope_theta": 10000.0, "mrope_section": [1, 1, 2]}},
  "vision_config": {"depth": 2, "hidden_size": 16, "intermediate_size": 24, "num_heads": 2,
    "out_hidden_size": 32, "window_size": 56, "fullatt_block_indexes": [1]}
}"#;

#[test]
fn forward_shapes_on_zero_weights() {
    let cfg = Config::from_json_str(TINY).unwrap();
    let model = Qwen2_5VlModel::new(
        &cfg,
        WeightLayout::Nested,
        VarBuilder::zeros(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let grid = [1, 4, 6];
    let pixels = Tensor::ones((24, 1176), DType::F32, &Device::Cpu).unwrap();
    let embeds = model
        .embed_images(&VisionInputs {
            pixel_values: pixels,
            grid_thw: vec![grid],
        })
        .unwrap();
    assert_eq!(embeds.dims(), &[6, 32]);
    assert_eq!(model.image_tokens(grid), 6);
    let mut ids = vec![1u32, 62];
    ids.extend([60; 6]);
    ids.extend([63, 5]);
    let prompt = Prompt {
        input_ids: &ids,
        grids: &[grid],
        image_embeds: Some(&embeds),
    };
    let mut cache = KvCache::new();
    let all = model.forward(&prompt, &mut cache, Logits::All).unwrap();
    assert_eq!(all.dims(), &[10, 64]);
    assert_eq!(cache.seq_len(), 10);
    let mut longer = ids.clone();
    longer.push(7);
    let next = model
        .forward(
            &Prompt {
                input_ids: &longer,
                ..prompt
            },
            &mut cache,
            Logits::Last,
        )
        .unwrap();
    assert_eq!(next.dims(), &[64]);
    assert_eq!(cache.seq_len(), 11);
}

#[test]
fn inputs_that_do_not_fit_are_errors() {
    let cfg = Config::from_json_str(TINY).unwrap();
    let model = Qwen2_5VlModel::new(
        &cfg,
        WeightLayout::Legacy,
        VarBuilder::zeros(DType::F32, &Device::Cpu),
    )
    .unwrap();
    // Wrong patch count for the grid.
    let pixels = Tensor::ones((20, 1176), DType::F32, &Device::Cpu).unwrap();
    assert!(model
        .embed_images(&VisionInputs {
            pixel_values: pixels,
            grid_thw: vec![[1, 4, 6]]
        })
        .is_err());
    // Image pads without embeddings.
    let ids = [62u32, 60, 60, 60, 60, 60, 60, 63];
    let prompt = Prompt {
        input_ids: &ids,
        grids: &[[1, 4, 6]],
        image_embeds: None,
    };
    assert!(model
        .forward(&prompt, &mut KvCache::new(), Logits::Last)
        .is_err());
    // Video is not supported: an explicit error, not silent text.
    let video = [1u32, 61, 2];
    let p = Prompt {
        input_ids: &video,
        grids: &[],
        image_embeds: None,
    };
    let err = model
        .forward(&p, &mut KvCache::new(), Logits::Last)
        .unwrap_err();
    assert!(err.to_string().contains("video"), "{err}");
    // Nothing left to run.
    let mut cache = KvCache::new();
    let text = [1u32, 2];
    let p = Prompt {
        input_ids: &text,
        grids: &[],
        image_embeds: None,
    };
    model.forward(&p, &mut cache, Logits::Last).unwrap();
    assert!(model.forward(&p, &mut cache, Logits::Last).is_err());
}

#[test]
fn weight_names_follow_the_layout_and_missing_ones_are_named() {
    let cfg = Config::from_json_str(TINY).unwrap();
    // Only the embedding: loading must fail on the first vision tensor, by full name.
    let embed = Tensor::zeros((64, 32), DType::F32, &Device::Cpu).unwrap();
    for (layout, embed_name, first_missing) in [
        (
            WeightLayout::Legacy,
            "model.embed_tokens.weight",
            "visual.blocks.0.norm1.weight",
        ),
        (
            WeightLayout::Nested,
            "model.language_model.embed_tokens.weight",
            "model.visual.blocks.0.norm1.weight",
        ),
    ] {
        let tensors = HashMap::from([(embed_name.to_string(), embed.clone())]);
        assert_eq!(
            WeightLayout::detect(|n| tensors.contains_key(n)),
            Some(layout)
        );
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let err = Qwen2_5VlModel::new(&cfg, layout, vb)
            .unwrap_err()
            .to_string();
        assert!(err.contains(first_missing), "{err}");
    }
}

#[test]
fn forward_last_batch_shapes_and_inputs_that_do_not_fit() {
    let cfg = Config::from_json_str(TINY).unwrap();
    let model = Qwen2_5VlModel::new(
        &cfg,
        WeightLayout::Nested,
        VarBuilder::zeros(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let text = |ids: &'static [u32]| Prompt {
        input_ids: ids,
        grids: &[],
        image_embeds: None,
    };
    let mut prefix = KvCache::new();
    model
        .forward(&text(&[1, 2]), &mut prefix, Logits::Last)
        .unwrap();
    let rows = [text(&[1, 2, 3]), text(&[1, 2, 3, 4, 5]), text(&[1, 2, 9])];
    let logits = model.forward_last_batch(&rows, &prefix).unwrap();
    assert_eq!(logits.dims(), &[3, 64]);
    assert_eq!((prefix.seq_len(), prefix.batch_size()), (2, 1));
    let empty = model.forward_last_batch(&rows, &KvCache::new()).unwrap();
    assert_eq!(empty.dims(), &[3, 64]);
    // No rows; a row that differs from row 0 inside the prefix; a row with nothing after it.
    assert!(model.forward_last_batch(&[], &prefix).is_err());
    let err = model
        .forward_last_batch(&[text(&[1, 2, 3]), text(&[1, 7, 3])], &prefix)
        .unwrap_err();
    assert!(err.to_string().contains("row 1"), "{err}");
    assert!(model
        .forward_last_batch(&[text(&[1, 2, 3]), text(&[1, 2])], &prefix)
        .is_err());
}
