//! The whole model's gradient: directional derivatives against central differences in f64, and
//! gradient accumulation over micro-batches against one batch.

use candle_core::{DType, Device, Tensor, Var};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::train::{TrainOptions, TrainRow};
use safeguard_model::qwen2_5_vl::{Prompt, Qwen2_5VlModel, VisionInputs};
use safeguard_train::lora::TrainableLora;

use crate::common::{fixtures, model_fixtures};

const IMAGE_IDS: [u32; 21] = [
    82, 90, 456, 502, 500, 500, 500, 500, 500, 500, 503, 179, 131, 84, 229, 294, 400, 308, 493, 52,
    243,
];
const GRID: [[usize; 3]; 1] = [[1, 4, 6]];

fn model(dtype: DType) -> (Qwen2_5VlModel, TrainableLora, Tensor) {
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    let loaded = load_model(&model_fixtures().join("tiny-a"), &opts).unwrap();
    let lora = TrainableLora::load(
        &fixtures().join("peft-grad/adapter"),
        loaded.layout,
        &Device::Cpu,
    )
    .unwrap()
    .with_dtype(dtype)
    .unwrap();
    let pixels = Tensor::read_npy(model_fixtures().join("pixels/small.npy")).unwrap();
    let embeds = loaded
        .model
        .embed_images(&VisionInputs {
            pixel_values: pixels,
            grid_thw: GRID.to_vec(),
        })
        .unwrap();
    let mut m = loaded.model;
    lora.attach(&mut m).unwrap();
    (m, lora, embeds)
}

fn targets(len: usize, from: usize) -> Vec<bool> {
    (0..len).map(|i| i >= from).collect()
}

/// `⟨∇L, v⟩` from the training pass at the current values of `vars`, and the central
/// difference `(L(θ + hv) − L(θ − hv)) / 2h`, for a deterministic direction `v` in [-1, 1)
/// (an LCG, a stream per tensor and `seed`). The values are restored afterwards.
fn directional(
    model: &Qwen2_5VlModel,
    rows: &[TrainRow<'_>],
    vars: &[Var],
    seed: u64,
    h: f64,
) -> (f64, f64) {
    let opts = TrainOptions::default();
    directional_with(vars, seed, h, |trainable| {
        model.train_step(rows, trainable, &opts).unwrap()
    })
}

/// [`directional`] for a loss computed by `run(trainable)` from scratch each time (e.g. with
/// the images embedded again, when vision-tower pairs are among `vars`).
fn directional_with(
    vars: &[Var],
    seed: u64,
    h: f64,
    run: impl Fn(&[Var]) -> safeguard_model::qwen2_5_vl::train::TrainOutput,
) -> (f64, f64) {
    let out = run(vars);
    let theta: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
    let dirs: Vec<Tensor> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut x = seed * 1000 + i as u64 + 1;
            let data: Vec<f64> = (0..v.elem_count())
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
                })
                .collect();
            Tensor::from_vec(data, v.shape(), &Device::Cpu).unwrap()
        })
        .collect();
    let analytic: f64 = out
        .grads
        .iter()
        .zip(&dirs)
        .map(|(g, d)| {
            (g.as_ref().expect("every tensor gets a gradient") * d)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum();
    let loss_at = |step: f64| {
        for ((v, t0), d) in vars.iter().zip(&theta).zip(&dirs) {
            v.set(&(t0 + (d * step).unwrap()).unwrap()).unwrap();
        }
        run(&[]).loss_sum
    };
    let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
    loss_at(0.0);
    (analytic, numeric)
}

#[test]
fn directional_derivatives_match_central_differences_in_f64() {
    let (model, lora, embeds) = model(DType::F64);
    let vars = lora.vars();
    let t = targets(IMAGE_IDS.len(), 9);
    let rows = [TrainRow {
        prompt: Prompt {
            input_ids: &IMAGE_IDS,
            grids: &GRID,
            image_embeds: Some(&embeds),
        },
        targets: &t,
    }];
    for seed in 0..3u64 {
        let (analytic, numeric) = directional(&model, &rows, &vars, seed, 1e-5);
        let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        assert!(
            err < 1e-6,
            "direction {seed}: autograd {analytic} vs numeric {numeric}"
        );
    }
}

#[test]
fn micro_batches_accumulate_to_one_batch() {
    let (model, lora, embeds) = model(DType::F32);
    let vars = lora.vars();
    let text: [u32; 9] = [5, 17, 33, 250, 7, 99, 12, 401, 3];
    let t_image = targets(IMAGE_IDS.len(), 12);
    let t_text = targets(text.len(), 4);
    let image_row = TrainRow {
        prompt: Prompt {
            input_ids: &IMAGE_IDS,
            grids: &GRID,
            image_embeds: Some(&embeds),
        },
        targets: &t_image,
    };
    let text_row = TrainRow {
        prompt: Prompt {
            input_ids: &text,
            grids: &[],
            image_embeds: None,
        },
        targets: &t_text,
    };
    let opts = TrainOptions::default();
    // One right-padded batch of two rows of different lengths...
    let batch = model
        .train_step(&[text_row, image_row], &vars, &opts)
        .unwrap();
    // ... equals the two rows run alone, summed.
    let a = model.train_step(&[image_row], &vars, &opts).unwrap();
    let b = model.train_step(&[text_row], &vars, &opts).unwrap();
    assert_eq!(batch.tokens, a.tokens + b.tokens);
    let loss_err = (batch.loss_sum - a.loss_sum - b.loss_sum).abs() / batch.loss_sum;
    assert!(loss_err < 1e-6, "{loss_err}");
    for ((g, ga), gb) in batch.grads.iter().zip(&a.grads).zip(&b.grads) {
        let (g, ga, gb) = (
            g.as_ref().unwrap(),
            ga.as_ref().unwrap(),
            gb.as_ref().unwrap(),
        );
        let sum = (ga + gb).unwrap();
        let err = crate::common::rel_err(g, &sum);
        assert!(err < 1e-5, "{err}");
    }
}

#[test]
fn full_fine_tuning_directional_derivatives_match_central_differences_in_f64() {
    use std::sync::{Arc, Mutex};

    use safeguard_engine::load_model_with;
    use safeguard_train::full::{FullParams, TrainableBackend};

    // tiny-a has its own LM head, tiny-b ties it to the embedding.
    for variant in ["tiny-a", "tiny-b"] {
        let dir = model_fixtures().join(variant);
        let made = Arc::new(Mutex::new(Vec::new()));
        let sink = made.clone();
        let opts = LoadOptions {
            dtype: DType::F64,
            ..LoadOptions::default()
        };
        let loaded = load_model_with(&dir, &opts, move |inner, layout| {
            Box::new(TrainableBackend::new(inner, layout, sink))
        })
        .unwrap();
        let params = FullParams::new(&made, &dir);
        let names = params.names();
        assert!(
            names.iter().any(|n| n.ends_with("embed_tokens.weight")),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|n| n.contains("visual")),
            "the vision tower stays frozen"
        );
        let vars = params.vars();
        let ids: [u32; 10] = [5, 17, 33, 250, 7, 99, 12, 401, 3, 77];
        let t = targets(ids.len(), 3);
        let rows = [TrainRow {
            prompt: Prompt {
                input_ids: &ids,
                grids: &[],
                image_embeds: None,
            },
            targets: &t,
        }];
        let out = loaded
            .model
            .train_step(&rows, &vars, &TrainOptions::default())
            .unwrap();
        for (name, g) in names.iter().zip(&out.grads) {
            assert!(g.is_some(), "{variant}: no gradient for {name}");
        }
        let (analytic, numeric) = directional(&loaded.model, &rows, &vars, 6, 1e-6);
        let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        assert!(
            err < 1e-6,
            "{variant}: autograd {analytic} vs numeric {numeric}"
        );
    }
}

#[test]
fn lora_dropout_masks_are_the_same_in_both_passes_of_recomputation() {
    use std::sync::Arc;

    use safeguard_train::lora::SeededDropout;

    let (mut model, lora, embeds) = model(DType::F32);
    let vars = lora.vars();
    let t = targets(IMAGE_IDS.len(), 12);
    let run = |model: &Qwen2_5VlModel, recompute: bool| {
        let rows = [TrainRow {
            prompt: Prompt {
                input_ids: &IMAGE_IDS,
                grids: &GRID,
                image_embeds: Some(&embeds),
            },
            targets: &t,
        }];
        let opts = TrainOptions {
            recompute,
            ..TrainOptions::default()
        };
        model.train_step(&rows, &vars, &opts).unwrap()
    };
    let plain = run(&model, true);
    let dropout = Arc::new(SeededDropout::new(0.5));
    model.set_lora_dropout(Some(dropout.clone()));
    // Off until set: the same numbers as without it.
    assert_eq!(run(&model, true).loss_sum, plain.loss_sum);
    dropout.set(Some((1, 0, 0)));
    let recomputed = run(&model, true);
    let whole = run(&model, false);
    assert_ne!(
        recomputed.loss_sum, plain.loss_sum,
        "dropout changes the loss"
    );
    assert!((recomputed.loss_sum - whole.loss_sum).abs() < 1e-5 * whole.loss_sum.abs());
    for (a, b) in recomputed.grads.iter().zip(&whole.grads) {
        let err = crate::common::rel_err(a.as_ref().unwrap(), b.as_ref().unwrap());
        assert!(
            err < 1e-4,
            "recomputed and whole-graph gradients differ: {err}"
        );
    }
    // Another step draws other masks; the same step the same ones.
    dropout.set(Some((1, 1, 0)));
    assert_ne!(run(&model, true).loss_sum, recomputed.loss_sum);
    dropout.set(Some((1, 0, 0)));
    assert_eq!(run(&model, true).loss_sum, recomputed.loss_sum);
}

#[test]
fn vision_tower_lora_pairs_get_exact_gradients_through_the_image_rows() {
    // tiny-a/lora (PEFT, no exclude_modules) adapts the vision MLPs' down_proj too.
    let opts = LoadOptions {
        dtype: DType::F64,
        ..LoadOptions::default()
    };
    let dir = model_fixtures().join("tiny-a");
    let mut loaded = load_model(&dir, &opts).unwrap();
    let lora = TrainableLora::load(&dir.join("lora"), loaded.layout, &Device::Cpu)
        .unwrap()
        .with_dtype(DType::F64)
        .unwrap();
    let names = lora.names();
    assert!(names.iter().any(|n| n.contains("visual")), "{names:?}");
    lora.attach(&mut loaded.model).unwrap();
    let model = loaded.model;
    let pixels = Tensor::read_npy(model_fixtures().join("pixels/small.npy"))
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let t = targets(IMAGE_IDS.len(), 9);
    let vars = lora.vars();
    let run = |trainable: &[Var]| {
        // The embeddings depend on the vision pairs: computed afresh, with their graph.
        let embeds = model
            .embed_images(&VisionInputs {
                pixel_values: pixels.clone(),
                grid_thw: GRID.to_vec(),
            })
            .unwrap();
        let rows = [TrainRow {
            prompt: Prompt {
                input_ids: &IMAGE_IDS,
                grids: &GRID,
                image_embeds: Some(&embeds),
            },
            targets: &t,
        }];
        model
            .train_step(&rows, trainable, &TrainOptions::default())
            .unwrap()
    };
    let out = run(&vars);
    for (name, g) in names.iter().zip(&out.grads) {
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        // B starts at zero in this adapter only where PEFT left it: A's gradient is then zero.
        if name.contains("lora_B") {
            assert!(norm > 0.0, "{name} got a zero gradient");
        }
    }
    let (analytic, numeric) = directional_with(&vars, 11, 1e-6, run);
    let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
    assert!(err < 1e-6, "autograd {analytic} vs numeric {numeric}");
}
