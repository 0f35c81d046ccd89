//! Generation, stop tokens, log-probabilities and prefix reuse on the tiny fixture model.

use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::sampling::{generate, log_softmax, SamplingParams, StopReason};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt, VisionInputs};

use crate::common::{fixtures, npy, npy_i64, rel_max_diff};
use crate::parity::read_case;

#[test]
fn stop_tokens_end_generation_and_logprobs_follow_the_logits() {
    let dir = fixtures().join("tiny-a");
    let model = load_model(&dir, &LoadOptions::default()).unwrap().model;
    let cdir = dir.join("cases").join("text");
    let c = read_case(&cdir);
    let greedy: Vec<u32> = npy_i64(cdir.join("greedy.npy"))
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let prompt = Prompt {
        input_ids: &c.ids,
        grids: &[],
        image_embeds: None,
    };
    let stop = greedy[2];
    let first_stop = greedy.iter().position(|&t| t == stop).unwrap();
    let params = SamplingParams {
        max_new_tokens: 20,
        stop_tokens: vec![stop],
        ..Default::default()
    };
    let out = generate(&model, &prompt, &params).unwrap();
    assert_eq!(out.stop, StopReason::StopToken);
    assert_eq!(out.tokens, greedy[..=first_stop].to_vec());
    assert_eq!(out.logprobs.len(), out.tokens.len());
    let golden: Vec<f32> = npy(cdir.join("logits.npy")).to_vec1().unwrap();
    let expected = log_softmax(&golden)[greedy[0] as usize];
    assert!((out.logprobs[0] as f64 - expected).abs() < 1e-4);
    assert!(out.logprobs.iter().all(|&l| l <= 0.0));

    let sampled = |seed| {
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 50,
            max_new_tokens: 8,
            seed,
            ..Default::default()
        };
        generate(&model, &prompt, &params).unwrap()
    };
    assert_eq!(sampled(5), sampled(5), "same seed, same generation");
    assert_eq!(sampled(5).tokens.len(), 8);
}

#[test]
fn a_cached_text_prefix_gives_the_same_logits_as_a_full_run() {
    let dir = fixtures().join("tiny-b");
    let model = load_model(&dir, &LoadOptions::default()).unwrap().model;
    let cdir = dir.join("cases").join("one_image");
    let c = read_case(&cdir);
    let inputs = VisionInputs {
        pixel_values: c.pixels.clone().unwrap(),
        grid_thw: c.grids.clone(),
    };
    let embeds = model.embed_images(&inputs).unwrap();
    let full = Prompt {
        input_ids: &c.ids,
        grids: &c.grids,
        image_embeds: Some(&embeds),
    };
    // The text before <|vision_start|> plays the policy prefix: cached once, reused.
    let start = c.ids.iter().position(|&t| t == 502).unwrap();
    let mut prefix_cache = KvCache::new();
    let prefix = Prompt {
        input_ids: &c.ids[..start],
        grids: &[],
        image_embeds: None,
    };
    model
        .forward(&prefix, &mut prefix_cache, Logits::Last)
        .unwrap();
    for _ in 0..2 {
        let mut cache = prefix_cache.clone();
        let logits = model.forward(&full, &mut cache, Logits::Last).unwrap();
        let d = rel_max_diff(&logits, &npy(cdir.join("logits.npy")));
        assert!(d <= 1e-4, "with a cached prefix: {d}");
        assert_eq!(cache.seq_len(), c.ids.len());
    }
    assert_eq!(
        prefix_cache.seq_len(),
        start,
        "clones must not grow the shared prefix"
    );
}

#[test]
fn a_cached_hub_snapshot_resolves_offline() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("models--acme--tiny-vl");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-a").join(f), snapshot.join(f)).unwrap();
    }
    let opts = HubOptions {
        offline: true,
        cache_dir: Some(home.path().to_path_buf()),
    };
    let dir = resolve_model("acme/tiny-vl", &opts).unwrap();
    assert_eq!(dir, snapshot);
    assert!(load_model(&dir, &LoadOptions::default()).is_ok());
    let err = resolve_model("acme/other", &opts).unwrap_err().to_string();
    assert!(
        err.contains("models--acme--other") && err.contains("--model DIR"),
        "{err}"
    );
}
