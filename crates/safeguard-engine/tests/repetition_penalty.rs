//! Greedy decoding with Hugging Face's repetition penalty, token for token against
//! transformers' `generate(do_sample=False, repetition_penalty=P)`
//! (`scripts/fixtures/generation_reference.py` → `tiny-guard/generation_reference.json`): on the
//! trained tiny guard (its reference prompts and images, penalties 1 … 3, with and without the
//! `<|im_end|>` stop) and on the random `tiny-a` checkpoint (40 tokens, where 1.05 already
//! changes the output).

use std::path::PathBuf;

use candle_core::Tensor;
use safeguard_engine::sampling::{generate, SamplingParams};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{Prompt, VisionInputs};
use safeguard_vision::{decode_and_preprocess, DecodeLimits, PreprocessConfig};
use serde_json::Value;

use crate::common::fixtures;
use crate::parity::read_case;

fn guard_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-guard")
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

fn params(penalty: f64, stop: Option<u32>) -> SamplingParams {
    SamplingParams {
        max_new_tokens: 40,
        stop_tokens: stop.into_iter().collect(),
        repetition_penalty: penalty,
        ..SamplingParams::default()
    }
}

#[test]
fn greedy_with_repetition_penalty_equals_transformers_on_the_tiny_guard() {
    let reference = json(guard_dir().join("reference.json"));
    let generation = json(guard_dir().join("generation_reference.json"));
    let loaded = load_model(&guard_dir(), &LoadOptions::default()).unwrap();
    let preprocess = PreprocessConfig::from_model_dir(guard_dir()).unwrap();
    let mut runs = 0;
    let mut changed = 0;
    for case in generation["cases"].as_array().unwrap() {
        let prompt_case = &reference["cases"][case["reference_case"].as_u64().unwrap() as usize];
        let prompt_ids = ids(&prompt_case["input_ids"]);
        assert_eq!(
            prompt_ids.len() as u64,
            case["prompt_len"].as_u64().unwrap()
        );
        let bytes = std::fs::read(guard_dir().join(case["image"].as_str().unwrap())).unwrap();
        let pre = decode_and_preprocess(&bytes, &DecodeLimits::default(), &preprocess).unwrap();
        let rows = pre.num_patches();
        let pixels = Tensor::from_vec(
            pre.pixel_values,
            (rows, preprocess.patch_dim()),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let grids = [pre.grid_thw];
        let embeds = loaded
            .model
            .embed_images(&VisionInputs {
                pixel_values: pixels,
                grid_thw: grids.to_vec(),
            })
            .unwrap();
        let prompt = Prompt {
            input_ids: &prompt_ids,
            grids: &grids,
            image_embeds: Some(&embeds),
        };
        for run in case["runs"].as_array().unwrap() {
            let penalty = run["repetition_penalty"].as_f64().unwrap();
            let stop = match run["stop"].as_str().unwrap() {
                "none" => None,
                _ => Some(generation["settings"]["stops"]["im_end"].as_u64().unwrap() as u32),
            };
            let got = generate(&loaded.model, &prompt, &params(penalty, stop)).unwrap();
            assert_eq!(
                got.tokens,
                ids(&run["generated_ids"]),
                "case {} penalty {penalty} stop {stop:?}",
                case["reference_case"]
            );
            runs += 1;
            changed += usize::from(run["differs_from_no_penalty"] == true);
        }
    }
    // The fixture exercises the penalty: some runs differ from plain greedy decoding.
    assert!(
        runs >= 50 && changed >= 5,
        "{runs} runs, {changed} changed by the penalty"
    );
}

#[test]
fn greedy_with_repetition_penalty_equals_transformers_on_a_random_checkpoint() {
    let generation = json(guard_dir().join("generation_reference.json"));
    let dir = fixtures().join("tiny-a");
    let model = load_model(&dir, &LoadOptions::default()).unwrap().model;
    let mut changed = 0;
    for case in generation["random_model"]["cases"].as_array().unwrap() {
        let name = case["case"].as_str().unwrap();
        let c = read_case(&dir.join("cases").join(name));
        let embeds = c.pixels.as_ref().map(|p| {
            model
                .embed_images(&VisionInputs {
                    pixel_values: p.clone(),
                    grid_thw: c.grids.clone(),
                })
                .unwrap()
        });
        let prompt = Prompt {
            input_ids: &c.ids,
            grids: &c.grids,
            image_embeds: embeds.as_ref(),
        };
        for run in case["runs"].as_array().unwrap() {
            let penalty = run["repetition_penalty"].as_f64().unwrap();
            let got = generate(&model, &prompt, &params(penalty, None)).unwrap();
            assert_eq!(
                got.tokens,
                ids(&run["generated_ids"]),
                "{name} penalty {penalty}"
            );
            changed += usize::from(run["differs_from_no_penalty"] == true);
        }
    }
    assert!(changed >= 3, "only {changed} runs changed by the penalty");
}
