//! `merge_adapter` writes a checkpoint that gives PEFT's merged logits without any adapter.

use candle_core::{DType, Tensor};
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::{KvCache, Logits, Prompt};
use safeguard_train::merge::merge_adapter;

use crate::common::{model_fixtures, rel_err};

#[test]
fn a_merged_checkpoint_gives_the_adapted_logits() {
    let base = model_fixtures().join("tiny-a");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    // This PEFT adapter also has vision-tower pairs (no exclude_modules): all get merged.
    let summary = merge_adapter(&base, &base.join("lora"), &out, None).unwrap();
    assert!(summary.merged > 0);
    assert!(summary.copied.contains(&"config.json".to_string()));
    let st = safetensors::SafeTensors::read_metadata(&std::fs::read(&summary.weights).unwrap())
        .unwrap()
        .1;
    assert_eq!(
        st.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let merged = load_model(&out, &LoadOptions::default()).unwrap();
    let ids: Vec<u32> = Tensor::read_npy(base.join("cases/text/input_ids.npy"))
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let prompt = Prompt {
        input_ids: &ids,
        grids: &[],
        image_embeds: None,
    };
    let logits = merged
        .model
        .forward(&prompt, &mut KvCache::new(), Logits::Last)
        .unwrap();
    let want = Tensor::read_npy(base.join("lora/cases/text/logits_merged.npy")).unwrap();
    let err = rel_err(&logits, &want);
    assert!(err < 1e-5, "merged logits relative error {err}");
    // And they differ from the base's: the merge did something.
    let plain = load_model(&base, &LoadOptions::default()).unwrap();
    let base_logits = plain
        .model
        .forward(&prompt, &mut KvCache::new(), Logits::Last)
        .unwrap();
    assert!(rel_err(&base_logits, &want) > 1e-3);
    // A second merge into the same directory is refused.
    let err = merge_adapter(&base, &base.join("lora"), &out, None).unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
}
