//! `safeguard train sft` killed with SIGKILL mid-run and resumed ends bit for bit where a
//! straight run ends; `safeguard debug grad` writes PyTorch + PEFT's loss and gradients;
//! `safeguard train merge` and `train preset` work from the command line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli_common::{ok, safeguard};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write_config(dir: &Path, steps: u64) -> PathBuf {
    let guard = root().join("safeguard-engine/tests/fixtures/tiny-guard");
    let mut lines = Vec::new();
    for i in 0..6 {
        let image = guard.join(if i % 2 == 0 {
            "image-a.png"
        } else {
            "image-b.png"
        });
        lines.push(
            serde_json::json!({
                "messages": [
                    {"role": "user", "content": "<image>Describe the image."},
                    {"role": "assistant", "content": format!("a plain shape, variant {i}")}
                ],
                "images": [image],
            })
            .to_string(),
        );
    }
    std::fs::write(dir.join("train.jsonl"), lines.join("\n")).unwrap();
    let cfg = format!(
        "[model]\npath = \"{}\"\nmax_pixels = 12544\n\n[data]\ntrain = \"train.jsonl\"\n\n[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\n\n[train]\noutput_dir = \"run\"\nmax_steps = {steps}\nbatch_size = 2\nlearning_rate = 1e-2\nsave_steps = 10\nsave_total_limit = 3\nseed = 3\n",
        guard.display()
    );
    let path = dir.join("sft.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn sft_killed_with_sigkill_resumes_to_the_same_bits() {
    let steps = 80;
    let straight = tempfile::tempdir().unwrap();
    let cfg = write_config(straight.path(), steps);
    let out = ok(&["train", "sft", "--config", cfg.to_str().unwrap()]);
    assert!(out.contains("done: 80 steps"), "{out}");

    let killed = tempfile::tempdir().unwrap();
    let cfg = write_config(killed.path(), steps);
    let mut child = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["train", "sft", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = killed.path().join("run");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("checkpoint-20").exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint-20 within 2 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!run.join("adapter").exists(), "killed before the end");
    // Resuming without --resume is refused; with it the run continues from a checkpoint.
    let refused = safeguard(&["train", "sft", "--config", cfg.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let out = ok(&[
        "train",
        "sft",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
    ]);
    assert!(out.contains("done: 80 steps"), "{out}");
    for file in [
        "adapter/adapter_model.safetensors",
        "checkpoint-80/optimizer.safetensors",
    ] {
        let a = std::fs::read(straight.path().join("run").join(file)).unwrap();
        let b = std::fs::read(run.join(file)).unwrap();
        assert!(a == b, "{file} differs after kill -9 and resume");
    }
    // At most save_total_limit checkpoints are kept, no temporary directory is left.
    let names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let checkpoints = names
        .iter()
        .filter(|n| n.starts_with("checkpoint-"))
        .count();
    assert!(checkpoints <= 3, "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn debug_grad_writes_peft_s_loss_and_gradients() {
    let fixtures = root().join("safeguard-train/tests/fixtures/peft-grad");
    let case_dir = fixtures.join("cases/adapter-rslora/text");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir.join("case.json")).unwrap())
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = root().join("safeguard-model/tests/fixtures/qwen25vl/tiny-a");
    ok(&[
        "debug",
        "grad",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        fixtures.join("adapter-rslora").to_str().unwrap(),
        "--input-ids",
        case["input_ids_cli"].as_str().unwrap(),
        "--target-from",
        &case["target_from"].to_string(),
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("loss.json")).unwrap())
            .unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir.join("loss.json")).unwrap())
            .unwrap();
    assert_eq!(got["tokens"], want["tokens"]);
    let (g, w) = (
        got["loss"].as_f64().unwrap(),
        want["loss"].as_f64().unwrap(),
    );
    assert!((g - w).abs() < 1e-5 * w, "{g} vs {w}");
    let read = |p: PathBuf| -> HashMap<String, Vec<f32>> {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                (name, data)
            })
            .collect()
    };
    let got = read(tmp.path().join("grads.safetensors"));
    let want = read(case_dir.join("grads.safetensors"));
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let g = &got[name];
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-4 * scale, "{name}: {diff} of {scale}");
    }
}

#[test]
fn merge_and_presets_from_the_command_line() {
    let presets = ok(&["train", "preset"]);
    for name in ["paper", "cpu-tiny", "cpu-small"] {
        assert!(presets.contains(name), "{presets}");
    }
    let paper = ok(&["train", "preset", "paper"]);
    assert!(
        paper.contains("r = 64") && paper.contains("alpha = 128"),
        "{paper}"
    );
    let model = root().join("safeguard-model/tests/fixtures/qwen25vl/tiny-a");
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&[
        "train",
        "merge",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        model.join("lora").to_str().unwrap(),
        "--out",
        tmp.path().join("m").to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(out.contains("merged"), "{out}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("m/config.json")).unwrap())
            .unwrap();
    let dtype = cfg.get("dtype").or(cfg.get("torch_dtype")).unwrap();
    assert_eq!(dtype, "bfloat16", "config.json names the stored dtype");
}

#[test]
fn debug_grad_reaches_vision_tower_pairs() {
    // tiny-a/lora was saved by PEFT without exclude_modules: it adapts the vision MLPs too.
    let model = root().join("safeguard-model/tests/fixtures/qwen25vl/tiny-a");
    let image = root().join("safeguard-engine/tests/fixtures/tiny-guard/image-a.png");
    let tmp = tempfile::tempdir().unwrap();
    ok(&[
        "debug",
        "grad",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        model.join("lora").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--input-ids",
        "5,17,<image>,33,250,7,99,12",
        "--target-from",
        "8",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    let bytes = std::fs::read(tmp.path().join("grads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let vision: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.contains("visual") && n.contains("lora_B"))
        .map(str::to_string)
        .collect();
    assert!(!vision.is_empty());
    for name in vision {
        let data = st.tensor(&name).unwrap();
        let nonzero = data
            .data()
            .chunks_exact(4)
            .any(|c| f32::from_le_bytes(c.try_into().unwrap()) != 0.0);
        assert!(nonzero, "{name} got a zero gradient");
    }
}
