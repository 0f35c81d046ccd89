//! `LocalGuard::chat` on the tiny trained checkpoint: a chat built like the guard's prompts
//! renders to the reference prompt text and ids and generates the reference greedy tokens;
//! stop strings, token budget, streaming, seeded sampling, log-probabilities (against
//! `chat_logprobs.json` from `scripts/fixtures/chat_logprobs_reference.py`) and the errors.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use safeguard_engine::chat::{
    ChatError, ChatMessage, ChatPart, ChatRequest, FinishReason, Role, TokenLogprob,
};
use safeguard_engine::tokenizer::{IMAGE_PAD, IM_END, IM_START, VISION_END, VISION_START};
use safeguard_engine::{LocalGuard, LocalGuardOptions};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-guard")
}

fn guard() -> LocalGuard {
    LocalGuard::load(&dir(), LocalGuardOptions::default()).unwrap()
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    reference["cases"].as_array().unwrap().clone()
}

fn case(policy: &str, format: &str, image: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| {
            c["policy"] == policy
                && c["format"] == format
                && c["rule"].is_null()
                && c["image"] == image
        })
        .unwrap_or_else(|| panic!("no reference case {policy} {format} {image}"))
}

/// The reference prompt as chat messages: its system text, and the user turn split around the
/// image block into text, image, text.
fn messages_of(prompt: &str, image: &str) -> Vec<ChatMessage> {
    let body = prompt
        .strip_prefix(&format!("{IM_START}system\n"))
        .expect("system turn");
    let (system, rest) = body
        .split_once(&format!("{IM_END}\n{IM_START}user\n"))
        .unwrap();
    let (user, tail) = rest.split_once(&format!("{IM_END}\n")).unwrap();
    assert_eq!(tail, format!("{IM_START}assistant\n"));
    let (before, after_start) = user.split_once(VISION_START).unwrap();
    let (_, after) = after_start.split_once(VISION_END).unwrap();
    let bytes = std::fs::read(dir().join(image)).unwrap();
    vec![
        ChatMessage::text(Role::System, system),
        ChatMessage {
            role: Role::User,
            parts: vec![
                ChatPart::Text(before.into()),
                ChatPart::Image(bytes),
                ChatPart::Text(after.into()),
            ],
        },
    ]
}

fn request(c: &Value) -> ChatRequest {
    ChatRequest {
        messages: messages_of(c["prompt"].as_str().unwrap(), c["image"].as_str().unwrap()),
        max_tokens: 48,
        ..Default::default()
    }
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn chat_prompt_equals_the_reference_prompt_and_ids() {
    let guard = guard();
    for (policy, format, image) in [
        ("L3", "verdict", "image-a.png"),
        ("L3", "reasoning", "image-b.png"),
        ("L1", "verdict", "image-b.png"),
    ] {
        let c = case(policy, format, image);
        let prepared = guard.prepare_chat(&request(&c)).unwrap();
        // The reference prompt text holds one `<|image_pad|>` per image (the template's
        // output before expansion); its ids hold them expanded.
        let mut collapsed = prepared.text.clone();
        while collapsed.contains(&IMAGE_PAD.repeat(2)) {
            collapsed = collapsed.replace(&IMAGE_PAD.repeat(2), IMAGE_PAD);
        }
        assert_eq!(
            collapsed,
            c["prompt"].as_str().unwrap(),
            "{policy} {format}"
        );
        assert_eq!(
            prepared.input_ids,
            ids(&c["input_ids"]),
            "{policy} {format}"
        );
        let grid: Vec<[usize; 3]> = serde_json::from_value(c["grid_thw"].clone()).unwrap();
        assert_eq!(prepared.grids, grid);
        // t·h·w patches, merged 2 × 2.
        let pads = grid[0].iter().product::<usize>() / 4;
        assert_eq!(prepared.text.matches(IMAGE_PAD).count(), pads);
    }
}

#[test]
fn greedy_chat_generates_the_reference_tokens() {
    let guard = guard();
    for c in cases().iter().filter(|c| c["rule"].is_null()) {
        let mut pieces = Vec::new();
        let out = guard
            .chat(&request(c), |d| pieces.push(d.text.to_string()))
            .unwrap();
        let what = format!("{} {} {}", c["policy"], c["format"], c["image"]);
        assert_eq!(out.completion_ids, ids(&c["generated_ids"]), "{what}");
        let expected = c["generated_text"].as_str().unwrap().replace(IM_END, "");
        assert_eq!(out.text, expected, "{what}");
        assert_eq!(pieces.concat(), out.text, "{what}");
        assert_eq!(out.finish_reason, FinishReason::Stop, "{what}");
        assert_eq!(out.prompt_tokens, c["input_ids"].as_array().unwrap().len());
        assert_eq!(out.completion_tokens, out.completion_ids.len());
    }
}

#[test]
fn stop_strings_and_the_token_budget_end_the_answer() {
    let guard = guard();
    let c = case("L3", "reasoning", "image-a.png");
    let reference = ids(&c["generated_ids"]);
    let stopped = guard
        .chat(
            &ChatRequest {
                stop: vec!["</think>".into()],
                ..request(&c)
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(stopped.text, "<think>a red square");
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(stopped.completion_ids.len() < reference.len());
    assert_eq!(
        stopped.completion_ids,
        reference[..stopped.completion_ids.len()]
    );

    let short = guard
        .chat(
            &ChatRequest {
                max_tokens: 3,
                ..request(&c)
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(short.completion_ids, reference[..3]);
    assert_eq!(short.finish_reason, FinishReason::Length);
    assert_eq!(short.completion_tokens, 3);

    let none = guard
        .chat(
            &ChatRequest {
                max_tokens: 0,
                ..request(&c)
            },
            |_| panic!("nothing to stream"),
        )
        .unwrap();
    assert_eq!((none.text.as_str(), none.completion_tokens), ("", 0));
}

#[test]
fn seeded_sampling_repeats_and_text_only_chats_run() {
    let guard = guard();
    let req = ChatRequest {
        messages: vec![ChatMessage::text(Role::User, "Describe a red square.")],
        max_tokens: 12,
        temperature: Some(1.3),
        top_p: Some(0.95),
        seed: 42,
        ..Default::default()
    };
    let a = guard.chat(&req, |_| {}).unwrap();
    let b = guard.chat(&req, |_| {}).unwrap();
    assert_eq!(a, b);
    assert!(a.completion_tokens >= 1 && a.completion_tokens <= 12);
    let prepared = guard.prepare_chat(&req).unwrap();
    assert!(prepared.grids.is_empty());
    assert!(prepared.text.starts_with(&format!(
        "{IM_START}system\nYou are a helpful assistant.{IM_END}\n"
    )));
}

#[test]
fn bad_images_and_requests_are_typed_errors() {
    let guard = guard();
    let c = case("L3", "verdict", "image-a.png");
    let mut req = request(&c);
    req.messages[1]
        .parts
        .push(ChatPart::Image(b"not an image".to_vec()));
    match guard.chat(&req, |_| {}) {
        Err(ChatError::Image { index: 1, .. }) => {}
        other => panic!("expected an image error for image 1, got {other:?}"),
    }
    let injected = ChatRequest {
        messages: vec![ChatMessage::text(Role::User, format!("hi {VISION_START}"))],
        ..Default::default()
    };
    assert!(matches!(
        guard.chat(&injected, |_| {}),
        Err(ChatError::Invalid { .. })
    ));
    assert!(matches!(
        guard.chat(&ChatRequest::default(), |_| {}),
        Err(ChatError::Invalid { .. })
    ));
    let cancelled = AtomicBool::new(true);
    assert!(matches!(
        guard.chat_until(&request(&c), &cancelled, |_| {}),
        Err(ChatError::Cancelled)
    ));
}

#[test]
fn logprobs_equal_the_reference_and_stream_with_their_pieces() {
    let guard = guard();
    let text = std::fs::read_to_string(dir().join("chat_logprobs.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let top = reference["top"].as_u64().unwrap() as usize;
    let mut checked = 0;
    for r in reference["cases"].as_array().unwrap() {
        let c = case(
            r["policy"].as_str().unwrap(),
            r["format"].as_str().unwrap(),
            r["image"].as_str().unwrap(),
        );
        let what = format!("{} {} {}", r["policy"], r["format"], r["image"]);
        let req = ChatRequest {
            logprobs: Some(top),
            ..request(&c)
        };
        let mut pieces = String::new();
        let mut streamed: Vec<TokenLogprob> = Vec::new();
        let out = guard
            .chat(&req, |d| {
                assert!(!d.text.is_empty() || !d.logprobs.is_empty(), "empty delta");
                pieces.push_str(d.text);
                streamed.extend_from_slice(d.logprobs);
            })
            .unwrap();
        assert_eq!(pieces, out.text, "{what}");
        assert_eq!(streamed, out.logprobs, "{what}");
        let steps = r["steps"].as_array().unwrap();
        // The stop token ends the answer and has no entry.
        assert_eq!(out.logprobs.len(), steps.len() - 1, "{what}");
        for (k, (got, want)) in out.logprobs.iter().zip(steps).enumerate() {
            assert_eq!(
                got.chosen.id as u64,
                want["id"].as_u64().unwrap(),
                "{what} {k}"
            );
            // The logits agree with transformers to ~5e-7 of their range (parity tests), about
            // 1e-5 here; the log-sum-exp adds nothing measurable (both in f64).
            let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() < 1e-4;
            assert!(close(got.chosen.logprob, &want["logprob"]), "{what} {k}");
            let want_top = want["top"].as_array().unwrap();
            assert_eq!(got.top.len(), want_top.len());
            for (g, w) in got.top.iter().zip(want_top) {
                assert_eq!(g.id as u64, w[0].as_u64().unwrap(), "{what} {k}");
                assert!(
                    close(g.logprob, &w[1]),
                    "{what} {k}: {} vs {}",
                    g.logprob,
                    w[1]
                );
            }
            assert!(got.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
            assert_eq!(
                got.chosen.token,
                guard.tokenizer().decode(&[got.chosen.id], false).unwrap()
            );
            checked += 1;
        }
        // The answer's tokens' bytes spell its text.
        let bytes: Vec<u8> = out
            .logprobs
            .iter()
            .flat_map(|t| t.chosen.bytes.clone())
            .collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), out.text, "{what}");
        // Score mode's P(unsafe) is the chat's first-token logprobs renormalised over the two
        // answer words.
        if r["format"] == "verdict" {
            let first = &out.logprobs[0].top;
            let lp = |id: u64| first.iter().find(|t| t.id as u64 == id).map(|t| t.logprob);
            let (u, s) = (lp(391).unwrap(), lp(428).unwrap());
            let p = u.exp() / (u.exp() + s.exp());
            assert!((p - c["p_unsafe"].as_f64().unwrap()).abs() < 1e-6, "{what}");
        }
    }
    assert!(checked >= 6, "only {checked} positions checked");

    // Zero alternatives: the chosen token's entry only; none asked: no entries.
    let c = case("L3", "verdict", "image-a.png");
    let only = guard
        .chat(
            &ChatRequest {
                logprobs: Some(0),
                ..request(&c)
            },
            |_| {},
        )
        .unwrap();
    assert!(only.logprobs.iter().all(|t| t.top.is_empty()));
    assert_eq!(only.logprobs.len(), 1);
    assert!(guard
        .chat(&request(&c), |_| {})
        .unwrap()
        .logprobs
        .is_empty());
    assert!(matches!(
        guard.chat(
            &ChatRequest {
                logprobs: Some(21),
                ..request(&c)
            },
            |_| {}
        ),
        Err(ChatError::Invalid { .. })
    ));
}
