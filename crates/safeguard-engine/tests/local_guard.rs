//! The local guard on the tiny trained checkpoint (`tests/fixtures/tiny-guard`, made by
//! `scripts/fixtures/make_tiny_guard.py` with PyTorch transformers): its scores against the
//! reference values in `reference.json`, rules hit, reason mode, the prefix cache, batching
//! and the errors.

use std::path::PathBuf;

use safeguard_core::guard::{Guard, GuardRequest, Judgement, RuleStatus};
use safeguard_core::policy::presets;
use safeguard_core::prompt::{self, Format};
use safeguard_core::{Assessment, Error, Policy};
use safeguard_engine::{LocalGuard, LocalGuardOptions};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-guard")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(dir().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The reference case for (policy, format, rule, image).
fn case(policy: &str, format: &str, rule: Option<&str>, image: &str) -> Value {
    reference()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["policy"] == policy
                && c["format"] == format
                && c["rule"].as_str() == rule
                && c["image"] == image
        })
        .unwrap_or_else(|| panic!("no reference case {policy} {format} {rule:?} {image}"))
        .clone()
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

fn guard(opts: LocalGuardOptions) -> LocalGuard {
    LocalGuard::load(&dir(), opts).unwrap()
}

fn judge_one(guard: &LocalGuard, bytes: &[u8], policy: &Policy, format: Format) -> Judgement {
    let request = GuardRequest {
        image: bytes,
        policy,
        format,
        threshold: 0.5,
    };
    guard.judge(&[request]).pop().unwrap().unwrap()
}

/// Score-mode differences to the single-pass reference come from running prefix, image and
/// question as separate chunks (and batched): float rounding only.
const TOL: f64 = 1e-6;

fn close(ours: f64, reference: &Value, what: &str) {
    let expected = reference.as_f64().unwrap();
    assert!(
        (ours - expected).abs() < TOL,
        "{what}: ours {ours}, reference {expected}"
    );
}

#[test]
fn prompt_ids_equal_the_reference_tokenization() {
    let guard = guard(LocalGuardOptions::default());
    let l3 = presets::get("L3").unwrap();
    for (format, rule, img) in [
        ("verdict", None, "image-a.png"),
        ("reasoning", None, "image-b.png"),
        ("verdict", Some("sexual"), "image-a.png"),
    ] {
        let c = case("L3", format, rule, img);
        let grid: Vec<usize> = serde_json::from_value(c["grid_thw"][0].clone()).unwrap();
        let tokens = grid.iter().product::<usize>() / 4;
        let question = rule.map(|id| prompt::rule_question(l3.rule(id).unwrap()));
        let ids = guard
            .prompt_ids(&l3, format.parse().unwrap(), question.as_deref(), tokens)
            .unwrap();
        let expected: Vec<u32> = serde_json::from_value(c["input_ids"].clone()).unwrap();
        assert_eq!(ids, expected, "{format} {rule:?}");
        // Tokenizing the pieces apart equals tokenizing the whole prompt text.
        let whole = guard
            .tokenizer()
            .encode(
                &c["prompt"]
                    .as_str()
                    .unwrap()
                    .replace("<|image_pad|>", &"<|image_pad|>".repeat(tokens)),
            )
            .unwrap();
        assert_eq!(whole, expected);
    }
}

#[test]
fn score_mode_p_unsafe_and_rule_scores_equal_the_reference() {
    let guard = guard(LocalGuardOptions::default());
    let l3 = presets::get("L3").unwrap();
    let prohibited: Vec<String> = l3.prohibited().map(|r| r.id.clone()).collect();
    for (img, verdict, hit) in [
        (
            "image-a.png",
            Assessment::Unsafe,
            vec!["sexual".to_string()],
        ),
        ("image-b.png", Assessment::Safe, vec![]),
    ] {
        let j = judge_one(&guard, &image(img), &l3, Format::Verdict);
        close(
            j.p_unsafe.unwrap(),
            &case("L3", "verdict", None, img)["p_unsafe"],
            img,
        );
        assert_eq!(j.verdict, verdict, "{img}");
        assert_eq!(j.rules_hit, hit, "{img}");
        assert_eq!(j.backend, "local");
        let asked: Vec<&str> = j.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            asked, prohibited,
            "every prohibited rule is asked, in order"
        );
        for rule in &j.rules {
            let c = case("L3", "verdict", Some(&rule.id), img);
            close(rule.score.unwrap(), &c["p_unsafe"], &rule.id);
            let expected = if hit.contains(&rule.id) {
                RuleStatus::Hit
            } else {
                RuleStatus::Clear
            };
            assert_eq!(rule.status, expected, "{img} {}", rule.id);
        }
        assert!(j.note.is_none(), "{:?}", j.note);
    }
}

#[test]
fn an_untrained_policy_still_scores_like_the_reference() {
    let guard = guard(LocalGuardOptions::default());
    let l1 = presets::get("L1").unwrap();
    for img in ["image-a.png", "image-b.png"] {
        let j = judge_one(&guard, &image(img), &l1, Format::Verdict);
        close(
            j.p_unsafe.unwrap(),
            &case("L1", "verdict", None, img)["p_unsafe"],
            img,
        );
    }
}

#[test]
fn batched_requests_without_rule_questions_equal_the_reference() {
    let guard = guard(LocalGuardOptions {
        rules: false,
        ..LocalGuardOptions::default()
    });
    let l3 = presets::get("L3").unwrap();
    let l1 = presets::get("L1").unwrap();
    let (a, b) = (image("image-a.png"), image("image-b.png"));
    let req = |bytes, policy| GuardRequest {
        image: bytes,
        policy,
        format: Format::Verdict,
        threshold: 0.5,
    };
    let results = guard.judge(&[
        req(&a, &l3),
        req(&b, &l3),
        req(&b"not an image"[..], &l3),
        req(&a, &l1),
        req(&b, &l1),
    ]);
    let expected = [
        ("L3", "image-a.png"),
        ("L3", "image-b.png"),
        ("", ""),
        ("L1", "image-a.png"),
        ("L1", "image-b.png"),
    ];
    for (result, (policy, img)) in results.iter().zip(expected) {
        if policy.is_empty() {
            assert!(
                matches!(result, Err(Error::InvalidImage { .. })),
                "{result:?}"
            );
            continue;
        }
        let j = result.as_ref().unwrap();
        close(
            j.p_unsafe.unwrap(),
            &case(policy, "verdict", None, img)["p_unsafe"],
            &format!("{policy} {img}"),
        );
        assert!(j.rules.is_empty() && j.rules_hit.is_empty());
    }
}

#[test]
fn reason_mode_parses_the_answer_and_scores_it() {
    let guard = guard(LocalGuardOptions {
        max_new_tokens: 48,
        ..LocalGuardOptions::default()
    });
    let l3 = presets::get("L3").unwrap();
    for (img, verdict, rationale) in [
        ("image-a.png", Assessment::Unsafe, "a red square"),
        ("image-b.png", Assessment::Safe, "blue stripes"),
    ] {
        let c = case("L3", "reasoning", None, img);
        let j = judge_one(&guard, &image(img), &l3, Format::Reasoning);
        let expected = c["generated_text"]
            .as_str()
            .unwrap()
            .trim_end_matches("<|im_end|>");
        assert_eq!(j.raw_output.as_deref(), Some(expected), "{img}");
        assert_eq!(j.verdict, verdict, "{img}");
        assert_eq!(j.rationale.as_deref(), Some(rationale), "{img}");
        // Scored at the answer token: greedy chose the answer, so it is the likelier one.
        let p = j.p_unsafe.expect("the answer token was found and scored");
        match verdict {
            Assessment::Unsafe => assert!(p > 0.5, "{img}: {p}"),
            _ => assert!(p < 0.5, "{img}: {p}"),
        }
    }
}

#[test]
fn output_without_a_verdict_is_an_unparsable_error_keeping_the_output() {
    let guard = guard(LocalGuardOptions {
        max_new_tokens: 3,
        ..LocalGuardOptions::default()
    });
    let l3 = presets::get("L3").unwrap();
    let request = GuardRequest {
        image: &image("image-a.png"),
        policy: &l3,
        format: Format::Reasoning,
        threshold: 0.5,
    };
    match guard.judge(&[request]).pop().unwrap() {
        Err(Error::Unparsable {
            backend, output, ..
        }) => {
            assert_eq!(backend, "local");
            assert!(output.starts_with("<think>"), "{output}");
        }
        other => panic!("expected Unparsable, got {other:?}"),
    }
}

#[test]
fn judgements_are_identical_with_and_without_the_prefix_cache() {
    let cached = guard(LocalGuardOptions::default());
    let uncached = guard(LocalGuardOptions {
        prefix_cache_bytes: 0,
        ..LocalGuardOptions::default()
    });
    let l3 = presets::get("L3").unwrap();
    let strip = |mut j: Judgement| {
        j.latency_ms = 0.0;
        j
    };
    for format in [Format::Verdict, Format::Reasoning] {
        for img in ["image-a.png", "image-b.png", "image-a.png"] {
            let bytes = image(img);
            let a = strip(judge_one(&cached, &bytes, &l3, format));
            let b = strip(judge_one(&uncached, &bytes, &l3, format));
            assert_eq!(a, b, "{format} {img}");
        }
    }
    let stats = cached.cache_stats();
    assert_eq!(stats.entries, 2, "one prefix per format: {stats:?}");
    assert_eq!(stats.misses, 2, "{stats:?}");
    assert_eq!(stats.hits, 4, "{stats:?}");
    assert!(stats.bytes > 0 && stats.bytes <= stats.budget);
    let off = uncached.cache_stats();
    assert_eq!((off.hits, off.entries), (0, 0), "{off:?}");
}

#[test]
fn a_bad_image_fails_alone_and_names_the_problem() {
    let guard = guard(LocalGuardOptions::default());
    let l3 = presets::get("L3").unwrap();
    let good = image("image-b.png");
    let truncated = &image("image-a.png")[..40];
    let req = |bytes| GuardRequest {
        image: bytes,
        policy: &l3,
        format: Format::Verdict,
        threshold: 0.5,
    };
    let results = guard.judge(&[req(truncated), req(&good)]);
    match &results[0] {
        Err(Error::InvalidImage { message }) => assert!(!message.is_empty()),
        other => panic!("expected InvalidImage, got {other:?}"),
    }
    assert_eq!(results[1].as_ref().unwrap().verdict, Assessment::Safe);
}
