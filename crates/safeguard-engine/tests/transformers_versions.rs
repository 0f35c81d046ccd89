//! Checkpoints as transformers 4.49 … 5.x write them (`scripts/fixtures/transformers_versions.py`:
//! one tiny Qwen2.5-VL, identical weights, loaded and re-saved by each version, so its
//! `config.json` carries that version's duplicate keys and its safetensors that version's tensor
//! names). Every one must load and give the logits that version's transformers computed.

use std::path::PathBuf;

use safeguard_engine::weights::load_config;
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, VisionInputs};

use crate::common::{npy, npy_i64, rel_max_diff};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../safeguard-model/tests/fixtures/transformers-versions")
}

fn versions() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn configs_of_every_transformers_version_parse() {
    let versions = versions();
    assert!(versions.len() >= 4, "{versions:?}");
    for version in &versions {
        let dir = root().join(version);
        // As re-saved after a load round trip, and as first saved from the release-style config.
        for d in [dir.clone(), dir.join("first-save")] {
            let cfg = load_config(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
            assert_eq!(cfg.vision_config.in_channels, 3, "{version}");
            assert_eq!(cfg.text_config.mrope_section, vec![1, 1, 2], "{version}");
            assert_eq!(cfg.text_config.hidden_size, 32, "{version}");
        }
    }
    // The worst realistic file (both in_chans and in_channels) is among them.
    let text = std::fs::read_to_string(root().join("4.55.4/config.json")).unwrap();
    assert!(text.contains("\"in_chans\"") && text.contains("\"in_channels\""));
}

#[test]
fn checkpoints_of_every_transformers_version_give_its_logits() {
    for version in versions() {
        let dir = root().join(&version);
        let loaded =
            load_model(&dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{version}: {e}"));
        for case in ["text", "one_image"] {
            let cdir = dir.join("cases").join(case);
            let ids: Vec<u32> = npy_i64(cdir.join("input_ids.npy"))
                .into_iter()
                .map(|i| i as u32)
                .collect();
            let (grids, embeds) = if case == "one_image" {
                let g = npy_i64(cdir.join("grid_thw.npy"));
                let grids = vec![[g[0] as usize, g[1] as usize, g[2] as usize]];
                let pixels = npy(root().join("pixels/small.npy"));
                let e = loaded
                    .model
                    .embed_images(&VisionInputs {
                        pixel_values: pixels,
                        grid_thw: grids.clone(),
                    })
                    .unwrap();
                (grids, Some(e))
            } else {
                (Vec::new(), None)
            };
            let prompt = Prompt {
                input_ids: &ids,
                grids: &grids,
                image_embeds: embeds.as_ref(),
            };
            let logits = loaded
                .model
                .forward(&prompt, &mut KvCache::new(), Logits::Last)
                .unwrap();
            let d = rel_max_diff(&logits, &npy(cdir.join("logits.npy")));
            eprintln!(
                "{version}/{case}: logits rel max diff {d:.2e} ({:?})",
                loaded.layout
            );
            assert!(d <= 1e-4, "{version}/{case}: logits differ by {d}");
        }
    }
}

/// `generation_config.json` as each version wrote it (the released Qwen2.5-VL decoding:
/// `do_sample` with temperature 1e-6, repetition_penalty 1.05, two eos ids).
#[test]
fn generation_configs_of_every_transformers_version_parse() {
    use safeguard_engine::generation::GenerationConfig;
    for version in versions() {
        let dir = root().join(&version);
        let cfg =
            GenerationConfig::from_model_dir(&dir).unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(cfg.eos_token_id, vec![504, 505], "{version}");
        assert_eq!(cfg.repetition_penalty, Some(1.05), "{version}");
        assert_eq!(cfg.do_sample, Some(true), "{version}");
        let params = cfg.generate_defaults();
        assert_eq!(params.repetition_penalty, 1.05, "{version}");
        assert!(
            params.temperature > 0.0,
            "{version}: do_sample means sampling"
        );
    }
}
