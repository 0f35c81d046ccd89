//! AdamW, clipping and schedules against torch.optim.AdamW, clip_grad_norm_ and
//! transformers' schedules (fixtures from `scripts/fixtures/train_reference.py`).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use safeguard_train::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};

use crate::common::{fixtures, rel_err};

#[derive(serde::Deserialize)]
struct Ref {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    max_grad_norm: f64,
    warmup_steps: u64,
    total_steps: u64,
    lrs: Vec<f64>,
    grad_norms: Vec<f64>,
}

#[test]
fn adamw_with_clipping_and_cosine_warmup_equals_torch() {
    let dir = fixtures().join("adamw");
    let r: Ref =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adamw.json")).unwrap()).unwrap();
    let t: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("adamw.safetensors"), &Device::Cpu).unwrap();
    let names = ["w", "b", "m"];
    let params: Vec<Var> = names
        .iter()
        .map(|n| Var::from_tensor(&t[&format!("init.{n}")]).unwrap())
        .collect();
    let config = AdamWConfig {
        beta1: r.betas[0],
        beta2: r.betas[1],
        eps: r.eps,
        weight_decay: r.weight_decay,
    };
    let mut opt = AdamW::new(
        config,
        &params,
        names.iter().map(|n| n.to_string()).collect(),
    )
    .unwrap();
    for step in 1..=r.total_steps {
        let lr = r.lr * Schedule::Cosine.factor(step - 1, r.warmup_steps, r.total_steps);
        let i = (step - 1) as usize;
        assert!(
            (lr - r.lrs[i]).abs() < 1e-12,
            "step {step}: lr {lr} vs {}",
            r.lrs[i]
        );
        let mut grads: Vec<Tensor> = names
            .iter()
            .map(|n| t[&format!("grad.{step}.{n}")].clone())
            .collect();
        let norm = clip_grad_norm(&mut grads, r.max_grad_norm).unwrap();
        assert!((norm - r.grad_norms[i]).abs() / r.grad_norms[i] < 1e-6);
        opt.update(&params, &grads, lr).unwrap();
        for (k, n) in names.iter().enumerate() {
            for (what, got) in [
                ("param", params[k].as_tensor().clone()),
                ("exp_avg", opt.m[k].clone()),
                ("exp_avg_sq", opt.v[k].clone()),
            ] {
                let want = &t[&format!("{what}.{step}.{n}")];
                let err = rel_err(&got, want);
                assert!(err < 1e-6, "step {step} {what}.{n}: {err}");
            }
        }
    }
    // The state survives a save and load exactly.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("optimizer.safetensors");
    opt.save(&path).unwrap();
    let mut back = AdamW::new(
        config,
        &params,
        names.iter().map(|n| n.to_string()).collect(),
    )
    .unwrap();
    back.load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.step, r.total_steps);
    for k in 0..names.len() {
        assert_eq!(rel_err(&back.m[k], &opt.m[k]), 0.0);
        assert_eq!(rel_err(&back.v[k], &opt.v[k]), 0.0);
    }
}

#[test]
fn schedules_equal_transformers() {
    let text = std::fs::read_to_string(fixtures().join("adamw/schedule.json")).unwrap();
    let all: HashMap<String, HashMap<String, Vec<f64>>> = serde_json::from_str(&text).unwrap();
    for (name, schedule) in [
        ("cosine", Schedule::Cosine),
        ("linear", Schedule::Linear),
        ("constant", Schedule::Constant),
    ] {
        let cases = &all[name];
        assert!(cases.len() >= 3);
        for (key, want) in cases {
            let (w, t) = key.split_once(',').unwrap();
            let (w, t): (u64, u64) = (w.parse().unwrap(), t.parse().unwrap());
            for (step, &f) in want.iter().enumerate() {
                let got = schedule.factor(step as u64, w, t);
                assert!(
                    (got - f).abs() < 1e-12,
                    "{name} {key} step {step}: {got} vs {f}"
                );
            }
        }
    }
}
