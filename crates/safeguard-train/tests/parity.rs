//! Loss, LoRA gradients and logits equal PyTorch + PEFT's (fixtures from
//! `scripts/fixtures/train_reference.py`: tiny-a, adapters with B ≠ 0, plain and rsLoRA).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::train::TrainOptions;
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, VisionInputs};
use safeguard_train::grad::sft_gradients;
use safeguard_train::lora::TrainableLora;

use crate::common::{fixtures, model_fixtures, rel_err};

#[derive(serde::Deserialize)]
struct Case {
    input_ids: Vec<u32>,
    grid_thw: Vec<[usize; 3]>,
    image: Option<String>,
    target_from: usize,
}

#[derive(serde::Deserialize)]
struct LossRef {
    loss: f64,
    tokens: usize,
}

/// A case's input, PyTorch's loss and PyTorch's gradients.
fn read_case(dir: &std::path::Path) -> (Case, LossRef, HashMap<String, Tensor>) {
    let json = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let grads = candle_core::safetensors::load(dir.join("grads.safetensors"), &Device::Cpu);
    (
        serde_json::from_str(&json("case.json")).unwrap(),
        serde_json::from_str(&json("loss.json")).unwrap(),
        grads.unwrap(),
    )
}

fn check(adapter: &str, case: &str, opts: TrainOptions) {
    let base = fixtures().join("peft-grad");
    let dir = base.join("cases").join(adapter).join(case);
    let (c, want, want_grads) = read_case(&dir);

    let mut loaded = load_model(&model_fixtures().join("tiny-a"), &LoadOptions::default()).unwrap();
    let lora = TrainableLora::load(&base.join(adapter), loaded.layout, &Device::Cpu).unwrap();
    let embeds = c.image.as_ref().map(|name| {
        let pixels =
            Tensor::read_npy(model_fixtures().join("pixels").join(format!("{name}.npy"))).unwrap();
        loaded
            .model
            .embed_images(&VisionInputs {
                pixel_values: pixels,
                grid_thw: c.grid_thw.clone(),
            })
            .unwrap()
    });
    let prompt = Prompt {
        input_ids: &c.input_ids,
        grids: &c.grid_thw,
        image_embeds: embeds.as_ref(),
    };
    let report = sft_gradients(&mut loaded.model, &lora, &prompt, c.target_from, &opts).unwrap();
    assert_eq!(report.tokens, want.tokens);
    let loss_err = (report.loss - want.loss).abs() / want.loss.abs();
    assert!(
        loss_err < 1e-5,
        "{adapter}/{case}: loss {} vs {}",
        report.loss,
        want.loss
    );
    assert_eq!(
        report.grads.len(),
        want_grads.len(),
        "one gradient per adapter tensor"
    );
    for (name, g) in &report.grads {
        let w = want_grads
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not an adapter key of PEFT's"));
        let err = rel_err(g, w);
        assert!(err < 1e-4, "{adapter}/{case} {name}: relative error {err}");
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name} got a zero gradient");
    }

    // The unmerged Var-backed adapter gives PEFT's logits at every position.
    let want_logits = Tensor::read_npy(dir.join("logits.npy")).unwrap();
    let logits = loaded
        .model
        .forward(&prompt, &mut KvCache::new(), Logits::All)
        .unwrap();
    let err = rel_err(&logits, &want_logits);
    assert!(err < 1e-5, "{adapter}/{case}: logits relative error {err}");
}

#[test]
fn lora_gradients_equal_peft_with_recomputation() {
    for adapter in ["adapter", "adapter-rslora"] {
        for case in ["text", "one_image"] {
            check(adapter, case, TrainOptions::default());
        }
    }
}

#[test]
fn lora_gradients_equal_peft_with_the_whole_graph_and_small_head_chunks() {
    let opts = TrainOptions {
        recompute: false,
        head_chunk: 3,
        ..TrainOptions::default()
    };
    check("adapter", "one_image", opts);
    check("adapter-rslora", "text", opts);
}

#[test]
fn bf16_base_weights_with_f32_adapters_stay_close_to_peft() {
    // Half-precision base, f32 LoRA pairs cast inside the graph, f32 gradients.
    let base = fixtures().join("peft-grad");
    let dir = base.join("cases/adapter/text");
    let (c, want, want_grads) = read_case(&dir);
    let opts = LoadOptions {
        dtype: candle_core::DType::BF16,
        ..LoadOptions::default()
    };
    let mut loaded = load_model(&model_fixtures().join("tiny-a"), &opts).unwrap();
    let lora = TrainableLora::load(&base.join("adapter"), loaded.layout, &Device::Cpu).unwrap();
    let prompt = Prompt {
        input_ids: &c.input_ids,
        grids: &[],
        image_embeds: None,
    };
    let report = sft_gradients(
        &mut loaded.model,
        &lora,
        &prompt,
        c.target_from,
        &TrainOptions::default(),
    )
    .unwrap();
    assert!(
        (report.loss - want.loss).abs() < 0.05 * want.loss,
        "{}",
        report.loss
    );
    for (name, g) in &report.grads {
        assert_eq!(g.dtype(), candle_core::DType::F32, "{name}");
        let err = rel_err(g, &want_grads[name]);
        assert!(err < 0.1, "{name}: bf16 relative error {err}");
    }
}
