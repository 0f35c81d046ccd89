//! PEFT files: what we save loads back (ours and the inference loader) under both key
//! layouts; what PEFT saved keeps its key names and its config when we save it again.

use candle_core::{DType, Device, Tensor};
use safeguard_engine::weights::load_lora;
use safeguard_engine::{load_model, LoadOptions};
use safeguard_model::qwen2_5_vl::WeightLayout;
use safeguard_train::lora::{LoraSpec, TrainableLora};

use crate::common::{fixtures, model_fixtures};

fn spec() -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.05,
        use_rslora: false,
        target_modules: vec!["q_proj".into(), "down_proj".into()],
        vision: false,
    }
}

#[test]
fn a_new_adapter_has_peft_s_init_names_and_config_in_both_layouts() {
    let mut loaded = load_model(&model_fixtures().join("tiny-a"), &LoadOptions::default()).unwrap();
    for (keys, prefix) in [
        (
            WeightLayout::Nested,
            "base_model.model.model.language_model.layers.",
        ),
        (WeightLayout::Legacy, "base_model.model.model.layers."),
    ] {
        let lora = TrainableLora::init(&mut loaded.model, &spec(), keys, 5, &Device::Cpu).unwrap();
        let names = lora.names();
        // 2 layers × (q_proj, down_proj) × (A, B); no vision-tower pair.
        assert_eq!(names.len(), 8, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with(prefix)), "{names:?}");
        for (name, var) in names.iter().zip(lora.vars()) {
            let t = var.as_tensor();
            assert_eq!(t.dtype(), DType::F32);
            let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            if name.contains("lora_B") {
                assert!(values.iter().all(|&v| v == 0.0), "B starts at zero");
            } else {
                // Kaiming-uniform with a = √5: U(−1/√in, 1/√in).
                let bound = 1.0 / (t.dim(1).unwrap() as f32).sqrt();
                assert!(values.iter().all(|v| v.abs() <= bound));
                let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(max > 0.8 * bound, "A spans its range: {max} of {bound}");
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        lora.save(tmp.path(), Some("tiny-a")).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["r"], 4);
        assert_eq!(
            cfg["lora_alpha"], 8,
            "an integral alpha is written as an int"
        );
        assert_eq!(cfg["lora_dropout"], 0.05);
        assert_eq!(cfg["exclude_modules"], ".*visual.*");
        assert_eq!(
            cfg["target_modules"],
            serde_json::json!(["down_proj", "q_proj"])
        );
        assert_eq!(cfg["base_model_name_or_path"], "tiny-a");
        let bytes = std::fs::read(tmp.path().join("adapter_model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        // Both loaders read it back: the trainable one with the same names and values, the
        // inference one against either checkpoint layout.
        let back = TrainableLora::load(tmp.path(), loaded.layout, &Device::Cpu).unwrap();
        assert_eq!(back.names(), names);
        for (a, b) in back.vars().iter().zip(lora.vars()) {
            let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap();
            assert_eq!(d.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        }
        assert_eq!(back.spec().dropout, 0.05);
        let adapter = load_lora(tmp.path(), loaded.layout).unwrap();
        assert_eq!(adapter.targets().count(), 4);
    }
}

#[test]
fn a_peft_adapter_keeps_its_names_and_regex_targets_when_saved_again() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("peft-grad/adapter");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        tmp.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    let regex = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)";
    cfg["target_modules"] = regex.into();
    std::fs::write(tmp.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    let lora = TrainableLora::load(tmp.path(), WeightLayout::Nested, &Device::Cpu).unwrap();
    let file_keys: Vec<String> = {
        let t: std::collections::HashMap<String, Tensor> = candle_core::safetensors::load(
            tmp.path().join("adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let mut k: Vec<String> = t.into_keys().collect();
        k.sort();
        k
    };
    let mut names = lora.names();
    names.sort();
    assert_eq!(names, file_keys);
    let out = tmp.path().join("again");
    lora.save(&out, None).unwrap();
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(again["target_modules"], regex, "a regex stays a regex");
    assert_eq!(again["exclude_modules"], cfg["exclude_modules"]);
    assert_eq!(
        again["base_model_name_or_path"],
        cfg["base_model_name_or_path"]
    );
}

/// Conversations in our JSONL layout tokenise to the ids transformers' Qwen2.5-VL chat template
/// gives (fixture from `scripts/fixtures/sft_chat_reference.py`, image = 4 pad tokens), and the
/// targets are exactly the assistant contents with their `<|im_end|>`.
#[test]
fn conversations_tokenise_as_transformers_chat_template() {
    use safeguard_engine::tokenizer::QwenTokenizer;
    use safeguard_train::data::{read_jsonl, tokenize};

    #[derive(serde::Deserialize)]
    struct Reference {
        name: String,
        messages_jsonl: serde_json::Value,
        input_ids: Vec<u32>,
    }
    let text = std::fs::read_to_string(fixtures().join("sft-chat/reference.json")).unwrap();
    let refs: Vec<Reference> = serde_json::from_str(&text).unwrap();
    assert_eq!(refs.len(), 3);
    let tokenizer =
        QwenTokenizer::from_file(&crate::common::tiny_guard().join("tokenizer.json")).unwrap();
    let im_end = tokenizer.special().im_end;
    let tmp = tempfile::tempdir().unwrap();
    for r in refs {
        let path = tmp.path().join(format!("{}.jsonl", r.name));
        std::fs::write(&path, r.messages_jsonl.to_string()).unwrap();
        let examples = read_jsonl(&path, None).unwrap();
        let counts = vec![4; examples[0].images.len()];
        let tok = tokenize(&tokenizer, &examples[0], &counts).unwrap();
        assert_eq!(tok.input_ids, r.input_ids, "{}", r.name);
        // The targets decode to the assistant turns, each closed by <|im_end|>.
        let assistant: Vec<String> = r.messages_jsonl["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect();
        let mut spans = Vec::new();
        let mut current = Vec::new();
        for (id, t) in tok.input_ids.iter().zip(&tok.targets) {
            if *t {
                current.push(*id);
                if *id == im_end {
                    spans.push(std::mem::take(&mut current));
                }
            }
        }
        assert!(
            current.is_empty(),
            "{}: a target run not closed by <|im_end|>",
            r.name
        );
        let decoded: Vec<String> = spans
            .iter()
            .map(|s| tokenizer.decode(&s[..s.len() - 1], false).unwrap())
            .collect();
        assert_eq!(decoded, assistant, "{}", r.name);
    }
}
