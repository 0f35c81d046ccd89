//! `run_sft` on the tiny-guard checkpoint (real tokenizer, real images): the losses fall, a
//! stopped and resumed run equals a straight one bit for bit, and a run directory written by
//! other settings is refused.

use std::path::{Path, PathBuf};

use safeguard_train::config::SftConfig;
use safeguard_train::sft::{run_sft, Event, RunOptions};

use crate::common::tiny_guard;

/// Eight recaption-style rows over the two fixture images, in both layouts.
pub fn write_data(dir: &Path) -> PathBuf {
    let a = tiny_guard().join("image-a.png");
    let b = tiny_guard().join("image-b.png");
    let mut lines = Vec::new();
    for i in 0..4 {
        lines.push(serde_json::json!({
            "messages": [
                {"role": "user", "content": "<image>Describe the image in detail."},
                {"role": "assistant", "content": format!("a red square on a white field, number {i}")}
            ],
            "images": [a],
        }));
        lines.push(serde_json::json!({
            "image": b,
            "prompt": "Describe the image in detail.",
            "target": format!("a blue circle with a knife, item {i}"),
        }));
    }
    let path = dir.join("train.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

pub fn config(dir: &Path, extra: &str) -> SftConfig {
    let data = write_data(dir);
    let text = format!(
        r#"
[model]
path = "{model}"
max_pixels = 12544

[data]
train = "{data}"
eval_fraction = 0.25

{lora}
[train]
output_dir = "{out}"
batch_size = 2
grad_accum = 1
learning_rate = 2e-2
warmup_steps = 1
save_steps = 3
eval_steps = 3
seed = 7
{extra}
"#,
        model = tiny_guard().display(),
        data = data.display(),
        out = dir.join("run").display(),
        lora = if extra.contains("mode = \"full\"") {
            ""
        } else {
            "[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]\n"
        },
    );
    SftConfig::from_toml_str(&text, dir).unwrap()
}

#[test]
fn sft_lowers_the_training_and_held_out_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "max_steps = 12");
    let mut losses = Vec::new();
    let mut evals = Vec::new();
    let summary = run_sft(&cfg, &RunOptions::default(), &mut |e| match e {
        Event::Step(m) => losses.push(m.loss),
        Event::Eval { loss, .. } => evals.push(*loss),
        _ => {}
    })
    .unwrap();
    assert!(summary.finished);
    assert_eq!(losses.len(), 12);
    assert_eq!(evals.len(), 4, "eval at steps 3, 6, 9, 12");
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[9..].iter().sum::<f64>() / 3.0;
    assert!(
        last < first - 1.5,
        "training loss {first} -> {last}: {losses:?} {evals:?}"
    );
    assert!(evals[3] < evals[0] - 0.3, "held-out loss {evals:?}");
    // The final adapter is a PEFT directory; metrics have the documented keys.
    let adapter = summary.output;
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["exclude_modules"], ".*visual.*");
    let metrics = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    let first_line: serde_json::Value =
        serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in [
        "loss",
        "grad_norm",
        "learning_rate",
        "tokens_per_second",
        "epoch",
        "step",
    ] {
        assert!(first_line.get(key).is_some(), "metrics line lacks {key}");
    }
    assert!(metrics.contains("eval_loss"));
}

#[test]
fn a_resumed_run_with_lora_dropout_equals_a_straight_one() {
    let make = |dir: &Path| {
        let mut cfg = config(dir, "max_steps = 4");
        cfg.lora.as_mut().unwrap().dropout = 0.1;
        cfg
    };
    let straight = tempfile::tempdir().unwrap();
    run_sft(&make(straight.path()), &RunOptions::default(), &mut |_| {}).unwrap();
    let split = tempfile::tempdir().unwrap();
    let cfg = make(split.path());
    let stop = RunOptions {
        resume: false,
        stop_at: Some(2),
    };
    run_sft(&cfg, &stop, &mut |_| {}).unwrap();
    let resume = RunOptions {
        resume: true,
        stop_at: None,
    };
    run_sft(&cfg, &resume, &mut |_| {}).unwrap();
    let file = "adapter/adapter_model.safetensors";
    assert!(
        bytes(&straight.path().join("run").join(file))
            == bytes(&split.path().join("run").join(file))
    );
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(split.path().join("run/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["lora_dropout"], 0.1);
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_stopped_and_resumed_run_equals_a_straight_one_bit_for_bit() {
    let straight = tempfile::tempdir().unwrap();
    let cfg = config(straight.path(), "max_steps = 6");
    run_sft(&cfg, &RunOptions::default(), &mut |_| {}).unwrap();

    let split = tempfile::tempdir().unwrap();
    let cfg2 = config(split.path(), "max_steps = 6");
    let half = run_sft(
        &cfg2,
        &RunOptions {
            resume: false,
            stop_at: Some(3),
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(!half.finished);
    // Without --resume the directory is refused, naming what to do.
    let err = run_sft(&cfg2, &RunOptions::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let mut first_step = None;
    run_sft(
        &cfg2,
        &RunOptions {
            resume: true,
            stop_at: None,
        },
        &mut |e| {
            if let Event::Started { start_step, .. } = e {
                first_step = Some(*start_step);
            }
        },
    )
    .unwrap();
    assert_eq!(first_step, Some(3));
    for file in [
        "adapter/adapter_model.safetensors",
        "checkpoint-6/optimizer.safetensors",
        "checkpoint-6/adapter/adapter_model.safetensors",
    ] {
        assert!(
            bytes(&straight.path().join("run").join(file))
                == bytes(&split.path().join("run").join(file)),
            "{file} differs between the straight and the resumed run"
        );
    }
    // The metrics agree too, apart from timings.
    let strip = |p: &Path| -> Vec<(u64, String)> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let key = v.get("loss").or(v.get("eval_loss")).unwrap().to_string();
                (v["step"].as_u64().unwrap(), key)
            })
            .collect()
    };
    assert_eq!(
        strip(&straight.path().join("run/metrics.jsonl")),
        strip(&split.path().join("run/metrics.jsonl"))
    );
}

#[test]
fn a_run_directory_of_other_settings_is_refused_naming_the_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "max_steps = 1");
    run_sft(&cfg, &RunOptions::default(), &mut |_| {}).unwrap();
    let mut other = cfg.clone();
    other.train.learning_rate = 1e-3;
    other.lora.as_mut().unwrap().r = 8;
    let err = run_sft(
        &other,
        &RunOptions {
            resume: true,
            stop_at: None,
        },
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("train.learning_rate"), "{err}");
    assert!(err.contains("lora.r"), "{err}");
    // Cadence settings are not part of the identity.
    let mut cadence = cfg.clone();
    cadence.train.logging_steps = 5;
    cadence.train.max_steps = Some(1);
    run_sft(
        &cadence,
        &RunOptions {
            resume: true,
            stop_at: None,
        },
        &mut |_| {},
    )
    .unwrap();
}

#[test]
fn unknown_config_keys_and_bad_values_are_errors_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let base = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\"]\n[train]\noutput_dir = \"o\"\nlearning_rate = 1e-4\n";
    SftConfig::from_toml_str(base, tmp.path()).unwrap();
    let err = SftConfig::from_toml_str(&format!("{base}lerning_rate = 1.0\n"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lerning_rate"), "{err}");
    let err = SftConfig::from_toml_str(&base.replace("\"q_proj\"", "\"qproj\""), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("qproj"), "{err}");
    let err = SftConfig::from_toml_str(&format!("preset = \"nope\"\n{base}"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("paper"), "{err}");
    // A preset is a base that the file overrides.
    let cfg = SftConfig::from_toml_str(
        "preset = \"paper\"\n[data]\ntrain = \"mine.jsonl\"\n",
        tmp.path(),
    )
    .unwrap();
    let spec = cfg.lora.unwrap();
    assert_eq!((spec.r, spec.alpha), (64, 128.0));
    assert_eq!(cfg.train.learning_rate, 1e-4);
    assert!(cfg.data.train.ends_with("mine.jsonl"));
}

#[test]
fn full_fine_tuning_trains_every_language_model_weight_and_resumes_exactly() {
    let extra = "mode = \"full\"\nmax_steps = 4\n";
    let make = |dir: &Path| {
        let mut cfg = config(dir, extra);
        cfg.train.learning_rate = 1e-3;
        cfg
    };
    let straight = tempfile::tempdir().unwrap();
    let cfg = make(straight.path());
    let mut losses = Vec::new();
    let mut parameters = 0;
    let summary = run_sft(&cfg, &RunOptions::default(), &mut |e| match e {
        Event::Step(m) => losses.push(m.loss),
        Event::Started { parameters: p, .. } => parameters = *p,
        _ => {}
    })
    .unwrap();
    assert!(losses[3] < losses[0], "{losses:?}");
    // Embedding, LM head, norms and every projection: far more than any adapter.
    let base = safeguard_engine::load_model(&tiny_guard(), &Default::default()).unwrap();
    let text = &base.config.text_config;
    assert!(
        parameters > 2 * text.vocab_size * text.hidden_size,
        "{parameters}"
    );
    // The saved checkpoint loads as a plain model and differs from the base.
    assert!(summary.output.ends_with("model"));
    let trained = safeguard_engine::load_model(&summary.output, &Default::default()).unwrap();
    let ids: Vec<u32> = vec![1, 2, 3, 4, 5];
    let prompt = safeguard_model::qwen2_5_vl::Prompt {
        input_ids: &ids,
        grids: &[],
        image_embeds: None,
    };
    let last = safeguard_model::qwen2_5_vl::Logits::Last;
    let a = base
        .model
        .forward(&prompt, &mut Default::default(), last)
        .unwrap();
    let b = trained
        .model
        .forward(&prompt, &mut Default::default(), last)
        .unwrap();
    assert!(crate::common::rel_err(&b, &a) > 1e-4);

    let split = tempfile::tempdir().unwrap();
    let cfg2 = make(split.path());
    run_sft(
        &cfg2,
        &RunOptions {
            resume: false,
            stop_at: Some(2),
        },
        &mut |_| {},
    )
    .unwrap();
    run_sft(
        &cfg2,
        &RunOptions {
            resume: true,
            stop_at: None,
        },
        &mut |_| {},
    )
    .unwrap();
    for file in [
        "model/model.safetensors",
        "checkpoint-4/optimizer.safetensors",
    ] {
        assert!(
            bytes(&straight.path().join("run").join(file))
                == bytes(&split.path().join("run").join(file)),
            "{file} differs between the straight and the resumed full fine-tune"
        );
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), "max_steps = 8");
    // Updates this large overflow the adapter within a few steps.
    cfg.train.learning_rate = 1e30;
    cfg.train.max_grad_norm = 0.0;
    cfg.train.warmup_steps = Some(0);
    cfg.train.save_steps = 1;
    let err = run_sft(&cfg, &RunOptions::default(), &mut |_| {}).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("non-finite"), "{text}");
    let run = tmp.path().join("run");
    assert!(
        !run.join("adapter").exists(),
        "no final adapter from a failed run"
    );
    // The checkpoints written before the failure are complete and finite.
    let last = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("checkpoint-")?.parse::<u64>().ok()
        })
        .max()
        .expect("a checkpoint before the failure");
    let adapter = run.join(format!(
        "checkpoint-{last}/adapter/adapter_model.safetensors"
    ));
    let tensors = candle_core::safetensors::load(adapter, &candle_core::Device::Cpu).unwrap();
    for (name, t) in tensors {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name} holds a non-finite value"
        );
    }
}

#[test]
fn training_continues_from_an_existing_adapter() {
    let first = tempfile::tempdir().unwrap();
    let cfg = config(first.path(), "max_steps = 8");
    let mut first_losses = Vec::new();
    let done = run_sft(&cfg, &RunOptions::default(), &mut |e| {
        if let Event::Step(m) = e {
            first_losses.push(m.loss);
        }
    })
    .unwrap();
    // A second run starts from the first run's adapter: where the first one ended, not where
    // a fresh adapter starts.
    let second = tempfile::tempdir().unwrap();
    let mut cfg2 = config(second.path(), "max_steps = 2");
    cfg2.train.init_adapter = Some(done.output.clone());
    let mut second_losses = Vec::new();
    run_sft(&cfg2, &RunOptions::default(), &mut |e| {
        if let Event::Step(m) = e {
            second_losses.push(m.loss);
        }
    })
    .unwrap();
    assert!(
        second_losses[0] < first_losses[0] - 1.0,
        "{first_losses:?} then {second_losses:?}"
    );
    // An adapter of another shape is refused, naming the key.
    let third = tempfile::tempdir().unwrap();
    let mut cfg3 = config(third.path(), "max_steps = 1");
    cfg3.train.init_adapter = Some(done.output);
    cfg3.lora.as_mut().unwrap().r = 8;
    let err = run_sft(&cfg3, &RunOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora.r"), "{err}");
}
