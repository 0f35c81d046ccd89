//! Parity with transformers (eager attention, f32) on the tiny random checkpoints: image
//! embeddings, M-RoPE position ids, last-position logits and 20 greedy tokens, for text-only
//! input, one image, two images of different sizes and an image that needs window padding.

use std::path::Path;

use candle_core::{Device, Tensor};
use safeguard_engine::sampling::{generate, SamplingParams};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{rope_index, KvCache, Logits, Prompt, VisionInputs};

use crate::common::{fixtures, image_names, npy, npy_i64, rel_max_diff};

/// Tolerance on `max |Δ| / range(reference)` in f32 (issue #4: 1e-4).
const F32_TOL: f32 = 1e-4;
const CASES: [&str; 4] = ["text", "one_image", "two_images", "window_pad"];

/// The inputs of one recorded case.
pub struct Case {
    pub ids: Vec<u32>,
    pub grids: Vec<[usize; 3]>,
    pub pixels: Option<Tensor>,
}

pub fn read_case(dir: &Path) -> Case {
    let ids = npy_i64(dir.join("input_ids.npy"))
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let names = image_names();
    let images: Vec<String> = npy_i64(dir.join("images.npy"))
        .into_iter()
        .map(|i| names[i as usize].clone())
        .collect();
    if images.is_empty() {
        return Case {
            ids,
            grids: Vec::new(),
            pixels: None,
        };
    }
    let g = npy_i64(dir.join("grid_thw.npy"));
    let grids = g
        .chunks(3)
        .map(|c| [c[0] as usize, c[1] as usize, c[2] as usize])
        .collect();
    let parts: Vec<Tensor> = images
        .iter()
        .map(|n| npy(fixtures().join("pixels").join(format!("{n}.npy"))))
        .collect();
    Case {
        ids,
        grids,
        pixels: Some(Tensor::cat(&parts, 0).unwrap()),
    }
}

fn check_variant(variant: &str) {
    let dir = fixtures().join(variant);
    let loaded = load_model(&dir, &LoadOptions::default()).unwrap();
    let model = &loaded.model;
    for case in CASES {
        let cdir = dir.join("cases").join(case);
        let c = read_case(&cdir);
        let embeds = c.pixels.as_ref().map(|p| {
            let e = model
                .embed_images(&VisionInputs {
                    pixel_values: p.clone(),
                    grid_thw: c.grids.clone(),
                })
                .unwrap();
            let d = rel_max_diff(&e, &npy(cdir.join("image_embeds.npy")));
            eprintln!("{variant}/{case}: image_embeds rel max diff {d:.2e}");
            assert!(
                d <= F32_TOL,
                "{variant}/{case}: image embeddings differ by {d}"
            );
            e
        });
        let pos = rope_index(&c.ids, loaded.config.image_token_id, &c.grids, 2).unwrap();
        let flat: Vec<i64> = pos.positions.concat();
        assert_eq!(
            flat,
            npy_i64(cdir.join("position_ids.npy")),
            "{variant}/{case}: position ids"
        );
        let prompt = Prompt {
            input_ids: &c.ids,
            grids: &c.grids,
            image_embeds: embeds.as_ref(),
        };
        let logits = model
            .forward(&prompt, &mut KvCache::new(), Logits::Last)
            .unwrap();
        let d = rel_max_diff(&logits, &npy(cdir.join("logits.npy")));
        eprintln!("{variant}/{case}: logits rel max diff {d:.2e}");
        assert!(d <= F32_TOL, "{variant}/{case}: logits differ by {d}");
        let params = SamplingParams {
            max_new_tokens: 20,
            ..Default::default()
        };
        let generated = generate(model, &prompt, &params).unwrap();
        let expected: Vec<u32> = npy_i64(cdir.join("greedy.npy"))
            .into_iter()
            .map(|i| i as u32)
            .collect();
        assert_eq!(
            generated.tokens, expected,
            "{variant}/{case}: greedy tokens"
        );
    }
}

#[test]
fn tiny_a_nested_layout_matches_transformers() {
    check_variant("tiny-a");
}

#[test]
fn tiny_b_flat_sharded_tied_matches_transformers() {
    check_variant("tiny-b");
}

#[test]
fn all_logits_agree_with_last_logits_and_with_incremental_decoding() {
    let dir = fixtures().join("tiny-a");
    let model = load_model(&dir, &LoadOptions::default()).unwrap().model;
    let c = read_case(&dir.join("cases").join("two_images"));
    let e = model
        .embed_images(&VisionInputs {
            pixel_values: c.pixels.clone().unwrap(),
            grid_thw: c.grids.clone(),
        })
        .unwrap();
    let full = Prompt {
        input_ids: &c.ids,
        grids: &c.grids,
        image_embeds: Some(&e),
    };
    let all = model
        .forward(&full, &mut KvCache::new(), Logits::All)
        .unwrap();
    let n = c.ids.len();
    assert_eq!(all.dims(), &[n, 512]);
    // Run the first n-3 tokens, then the rest one by one through the cache.
    let mut cache = KvCache::new();
    let head = Prompt {
        input_ids: &c.ids[..n - 3],
        ..full
    };
    model.forward(&head, &mut cache, Logits::Last).unwrap();
    for k in n - 3..n {
        let step = Prompt {
            input_ids: &c.ids[..=k],
            ..full
        };
        let last = model.forward(&step, &mut cache, Logits::Last).unwrap();
        let d = rel_max_diff(&last, &all.get(k).unwrap());
        assert!(d < 1e-5, "token {k}: cached decoding differs by {d}");
    }
    assert_eq!(cache.seq_len(), n);
    let _ = Device::Cpu;
}
