//! `safeguard debug forward` on the tiny Qwen2.5-VL fixtures of safeguard-model.

use std::path::{Path, PathBuf};

use safeguard_engine::candle_core::{DType, Device, Tensor};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, VisionInputs};

use crate::cli_common::{fails, ok};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../safeguard-model/tests/fixtures/qwen25vl")
}

fn image(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../safeguard-vision/tests/fixtures/images")
        .join(name)
        .display()
        .to_string()
}

fn npy(path: &Path) -> Tensor {
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let range = (b.max(0).unwrap() - b.min(0).unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / range
}

#[test]
fn text_only_logits_match_the_transformers_golden() {
    let case = fixtures().join("tiny-a/cases/text");
    let ids: Vec<String> = npy(&case.join("input_ids.npy"))
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(i64::to_string)
        .collect();
    let out = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny-a");
    ok(&[
        "debug",
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input-ids",
        &ids.join(","),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let logits = npy(&out.path().join("logits.npy"));
    assert_eq!(logits.dims(), &[512]);
    let d = max_rel_diff(&logits, &npy(&case.join("logits.npy")));
    assert!(d <= 1e-4, "logits differ from transformers by {d}");
    assert_eq!(npy(&out.path().join("image_embeds.npy")).dims(), &[0, 64]);
}

#[test]
fn two_images_match_the_library_on_the_preprocessed_pixels() {
    let model_dir = fixtures().join("tiny-b");
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (image("baseline_444.jpg"), image("exif_rotated.jpg"));
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for (k, img) in [&a, &b].into_iter().enumerate() {
        let dir = tmp.path().join(format!("pre{k}"));
        ok(&[
            "debug",
            "preprocess",
            img,
            "--max-pixels",
            "20000",
            "--out",
            dir.to_str().unwrap(),
        ]);
        pixels.push(npy(&dir.join("pixel_values.npy")));
        let grid: [usize; 3] =
            serde_json::from_str(&std::fs::read_to_string(dir.join("grid_thw.json")).unwrap())
                .unwrap();
        grids.push(grid);
    }
    let out = tmp.path().join("fwd");
    ok(&[
        "debug",
        "forward",
        "--model",
        model_dir.to_str().unwrap(),
        "--image",
        &a,
        "--image",
        &b,
        "--input-ids",
        "12,<image>,40,41,<image>,7",
        "--max-pixels",
        "20000",
        "--out",
        out.to_str().unwrap(),
    ]);
    let tokens: usize = grids.iter().map(|g| g[0] * g[1] * g[2] / 4).sum();
    let embeds = npy(&out.join("image_embeds.npy"));
    assert_eq!(embeds.dims(), &[tokens, 48]);

    // The same forward pass through the library, on the pixels `debug preprocess` wrote.
    let model = load_model(&model_dir, &LoadOptions::default())
        .unwrap()
        .model;
    let pixel_values = Tensor::cat(&pixels, 0).unwrap();
    let expected_embeds = model
        .embed_images(&VisionInputs {
            pixel_values,
            grid_thw: grids.clone(),
        })
        .unwrap();
    assert!(max_rel_diff(&embeds, &expected_embeds) < 1e-6);
    let mut ids = vec![12u32];
    for (k, g) in grids.iter().enumerate() {
        ids.push(502);
        ids.extend(std::iter::repeat_n(500, g[0] * g[1] * g[2] / 4));
        ids.push(503);
        ids.extend(if k == 0 { vec![40, 41] } else { vec![7] });
    }
    let prompt = Prompt {
        input_ids: &ids,
        grids: &grids,
        image_embeds: Some(&expected_embeds),
    };
    let logits = model
        .forward(&prompt, &mut KvCache::new(), Logits::Last)
        .unwrap();
    assert!(max_rel_diff(&npy(&out.join("logits.npy")), &logits) < 1e-6);
    let _ = Device::Cpu;
}

#[test]
fn mismatched_images_and_bad_inputs_are_usage_errors() {
    let model = fixtures().join("tiny-a");
    let model = model.to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let out = out.path().to_str().unwrap();
    let err = fails(&[
        "debug",
        "forward",
        "--model",
        model,
        "--input-ids",
        "1,<image>,2",
        "--out",
        out,
    ]);
    assert!(err.contains("<image>"), "{err}");
    let err = fails(&[
        "debug",
        "forward",
        "--model",
        model,
        "--input-ids",
        "1,x,2",
        "--out",
        out,
    ]);
    assert!(err.contains("`x`"), "{err}");
    let err = fails(&[
        "debug",
        "forward",
        "--model",
        model,
        "--input-ids",
        "1",
        "--dtype",
        "f8",
        "--out",
        out,
    ]);
    assert!(err.contains("f8"), "{err}");
    let err = fails(&[
        "debug",
        "forward",
        "--model",
        model,
        "--input-ids",
        "1",
        "--device",
        "tpu",
        "--out",
        out,
    ]);
    assert!(err.contains("tpu"), "{err}");
    let err = fails(&[
        "debug",
        "forward",
        "--model",
        "/no/such/model",
        "--input-ids",
        "1",
        "--out",
        out,
    ]);
    assert!(err.contains("/no/such/model"), "{err}");
}

#[test]
fn hub_id_offline_and_not_cached_says_where_to_put_the_files() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args([
            "debug",
            "forward",
            "--model",
            "Qwen/NotCached-Tiny",
            "--input-ids",
            "1",
            "--out",
        ])
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("Qwen/NotCached-Tiny")
            && err.contains("--model DIR")
            && err.contains("models--Qwen--NotCached-Tiny"),
        "{err}"
    );
}

/// `debug random-model` writes a directory that loads like a checkpoint: its config is the
/// named shape fitted to the tokenizer, its weights are in the asked dtype, and `check` runs.
#[test]
fn random_model_writes_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-random");
    let guard =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../safeguard-engine/tests/fixtures/tiny-guard");
    let tokenizer = guard.join("tokenizer.json");
    ok(&[
        "debug",
        "random-model",
        "--shape",
        "tiny",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--dtype",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let loaded = load_model(
        &out,
        &LoadOptions {
            dtype: DType::F32,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    // The tiny-guard tokenizer's ids (not the released checkpoints' 151655…).
    assert_eq!(loaded.config.image_token_id, 1022);
    assert!(loaded.config.text_config.vocab_size >= 1024);
    assert_eq!(loaded.config.text_config.hidden_size, 32);
    let image = guard.join("image-a.png");
    let json = ok(&[
        "check",
        image.to_str().unwrap(),
        "--model",
        out.to_str().unwrap(),
        "--policy",
        "L3",
        "--no-rules",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    let p = v["p_unsafe"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{v}");
    let err = fails(&[
        "debug",
        "random-model",
        "--shape",
        "tiny",
        "--tokenizer",
        "/nonexistent/tokenizer.json",
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
}
