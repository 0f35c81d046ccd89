//! Guard prompt templates on the tiny guard: the token ids of every built-in template equal
//! those transformers builds for the same messages (`scripts/fixtures/template_reference.py`),
//! and score mode, rules hit, reason mode and the prefix cache work under each.

use std::path::PathBuf;

use safeguard_core::guard::{Guard, GuardRequest};
use safeguard_core::policy::presets;
use safeguard_core::prompt::Format;
use safeguard_core::template::Template;
use safeguard_core::Error;
use safeguard_engine::{LocalGuard, LocalGuardOptions};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-guard")
}

fn guard(template: &str) -> LocalGuard {
    LocalGuard::load(
        &dir(),
        LocalGuardOptions {
            template: Template::load(template).unwrap(),
            ..LocalGuardOptions::default()
        },
    )
    .unwrap()
}

fn format(name: &str) -> Format {
    name.parse().unwrap()
}

#[test]
fn every_builtin_template_builds_the_ids_transformers_builds() {
    let path = dir().join("template_reference.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let policy = presets::get(reference["policy"].as_str().unwrap()).unwrap();
    assert_eq!(
        policy.prompt_text(),
        reference["policy_text"].as_str().unwrap(),
        "the fixture was made from another policy text: rerun scripts/fixtures/template_reference.py"
    );
    let mut seen = std::collections::BTreeSet::new();
    for case in reference["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let fmt = format(case["format"].as_str().unwrap());
        let tokens = case["image_tokens"].as_u64().unwrap() as usize;
        let expected: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ours = guard(name).prompt_ids(&policy, fmt, None, tokens).unwrap();
        assert_eq!(ours, expected, "{name}/{fmt}");
        seen.insert(name.to_string());
    }
    let all: std::collections::BTreeSet<String> =
        Template::BUILTINS.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, all, "every built-in template has a reference case");
}

#[test]
fn score_rules_reason_and_cache_work_under_every_template() {
    let l3 = presets::get("L3").unwrap();
    let image = std::fs::read(dir().join("image-a.png")).unwrap();
    for name in Template::BUILTINS {
        let guard = guard(name);
        let template = Template::builtin(name).unwrap();
        for fmt in Format::ALL {
            let request = GuardRequest {
                image: &image,
                policy: &l3,
                format: fmt,
                threshold: 0.5,
            };
            let results = guard.judge(&[request, request]);
            if template.format(fmt).is_err() {
                for r in results {
                    let err = r.unwrap_err().to_string();
                    assert!(err.contains("has no"), "{name}/{fmt}: {err}");
                }
                continue;
            }
            for r in results {
                match (fmt, r) {
                    (Format::Verdict, Ok(j)) => {
                        let p = j.p_unsafe.unwrap();
                        assert!((0.0..=1.0).contains(&p), "{name}: {p}");
                        // Rules hit: every prohibited rule of L3 got its own score.
                        assert_eq!(j.rules.len(), l3.prohibited().count(), "{name}");
                    }
                    // The tiny guard was trained on SafeGuard's layout only: under another
                    // layout its generated text need not hold a verdict.
                    (_, Ok(_)) | (_, Err(Error::Unparsable { .. })) => {}
                    (_, Err(e)) => panic!("{name}/{fmt}: {e}"),
                }
            }
        }
        // The second request of each pair reused the cached prefix (the system prompt alone
        // when the image comes first).
        assert!(
            guard.cache_stats().hits > 0,
            "{name}: {:?}",
            guard.cache_stats()
        );
    }
}

#[test]
fn a_template_file_is_used_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mine.toml");
    std::fs::write(
        &path,
        r#"name = "mine"
[verdict]
system = "Be strict."
user = "{image}Rules:\n{policy}\n{question}"
question = "Safe?"
instruction = "One word: safe or unsafe."
"#,
    )
    .unwrap();
    let guard = guard(path.to_str().unwrap());
    let l3 = presets::get("L3").unwrap();
    let ids = guard.prompt_ids(&l3, Format::Verdict, None, 4).unwrap();
    let text = guard.tokenizer().decode(&ids, false).unwrap();
    assert!(
        text.starts_with(
            "<|im_start|>system\nBe strict.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("Safe? One word: safe or unsafe.<|im_end|>\n<|im_start|>assistant\n"),
        "{text}"
    );
    let err = LocalGuard::load(
        &dir(),
        LocalGuardOptions {
            template: Template::load(path.to_str().unwrap()).unwrap(),
            ..LocalGuardOptions::default()
        },
    )
    .unwrap()
    .prompt_ids(&l3, Format::Json, None, 4)
    .unwrap_err()
    .to_string();
    assert!(err.contains("has no json format"), "{err}");
}
