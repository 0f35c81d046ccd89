//! `LocalGuard::chat` on the tiny trained checkpoint: a chat built like the guard's prompts
//! renders to the reference prompt text and ids and generates the reference greedy tokens;
//! stop strings, token budget, streaming, seeded sampling and the errors.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use safeguard_engine::chat::{ChatError, ChatMessage, ChatPart, ChatRequest, FinishReason, Role};
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
            .chat(&request(c), |p| pieces.push(p.to_string()))
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
        temperature: 1.3,
        top_p: 0.95,
        seed: 42,
        stop: Vec::new(),
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
