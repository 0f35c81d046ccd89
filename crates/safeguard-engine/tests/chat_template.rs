//! A checkpoint's own chat template: the stock Qwen2.5-VL template (as transformers v5 saves it,
//! `scripts/fixtures/processor_versions.py`) renders exactly as the built-in rendering, and a
//! fine-tune's template replaces it in chat.

use std::path::PathBuf;

use safeguard_engine::chat::{ChatMessage, ChatPart, ChatRequest, Role};
use safeguard_engine::chat_template::ChatTemplate;
use safeguard_engine::tokenizer::{render_chat, Message, Part};
use safeguard_engine::{LocalGuard, LocalGuardOptions};

fn tiny_guard() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-guard")
}

fn stock() -> ChatTemplate {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../safeguard-vision/tests/fixtures/processor-v5");
    ChatTemplate::from_model_dir(&dir)
        .unwrap()
        .expect("chat_template.jinja")
}

fn conversations() -> Vec<Vec<Message>> {
    let text = |role, t: &str| Message::text(role, t);
    vec![
        vec![Message {
            role: Role::User,
            parts: vec![
                Part::Image { tokens: 4 },
                Part::Text("Is this image safe?".into()),
            ],
        }],
        vec![
            text(Role::System, "Judge by the policy."),
            Message {
                role: Role::User,
                parts: vec![
                    Part::Text("Policy: no weapons.".into()),
                    Part::Image { tokens: 2 },
                    Part::Text("Safe or unsafe?".into()),
                ],
            },
        ],
        vec![
            Message {
                role: Role::User,
                parts: vec![
                    Part::Image { tokens: 3 },
                    Part::Image { tokens: 1 },
                    Part::Text("Compare.".into()),
                ],
            },
            text(Role::Assistant, "The first."),
            text(Role::User, "Why?"),
        ],
        vec![text(Role::User, "Hello")],
    ]
}

#[test]
fn the_stock_template_renders_as_the_built_in_rendering() {
    let template = stock();
    for messages in conversations() {
        for generation_prompt in [true, false] {
            assert_eq!(
                template.render(&messages, generation_prompt).unwrap(),
                render_chat(&messages, generation_prompt),
                "{messages:?}"
            );
        }
    }
}

#[test]
fn a_fine_tunes_template_is_used_in_chat() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_guard()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let stock_text = std::fs::read_to_string(stock().source).unwrap();
    let custom = stock_text.replace(
        "You are a helpful assistant.",
        "You are a careful safety reviewer.",
    );
    assert_ne!(custom, stock_text);
    std::fs::write(dir.path().join("chat_template.jinja"), custom).unwrap();
    let guard = LocalGuard::load(dir.path(), LocalGuardOptions::default()).unwrap();
    let image = std::fs::read(tiny_guard().join("image-a.png")).unwrap();
    let req = ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            parts: vec![
                ChatPart::Image(image),
                ChatPart::Text("Is this safe?".into()),
            ],
        }],
        ..Default::default()
    };
    let prepared = guard.prepare_chat(&req).unwrap();
    assert!(
        prepared
            .text
            .starts_with("<|im_start|>system\nYou are a careful safety reviewer.<|im_end|>\n"),
        "{}",
        prepared.text
    );
    // The image is expanded to its tokens as with the built-in rendering.
    let pads = prepared.text.matches("<|image_pad|>").count();
    assert_eq!(pads, 4, "{}", prepared.text);
    // The unmodified checkpoint has no template of its own.
    let plain = LocalGuard::load(&tiny_guard(), LocalGuardOptions::default()).unwrap();
    assert!(plain.chat_template().is_none());
    assert!(plain
        .prepare_chat(&req)
        .unwrap()
        .text
        .contains("You are a helpful assistant."));
}

#[test]
fn a_template_that_drops_images_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}{{ m['role'] }}{% endfor %}",
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    let err = t.render(&conversations()[0], true).unwrap_err().to_string();
    assert!(err.contains("0 image placeholders for 1 images"), "{err}");
}

/// Our rendering of the stock and of a fine-tune's template equals transformers'
/// `apply_chat_template` (`scripts/fixtures/chat_template_reference.py`): text and token ids,
/// for one image, a system message, a multi-turn chat with two images and text only.
#[test]
fn templates_render_as_transformers_renders_them() {
    use safeguard_engine::tokenizer::QwenTokenizer;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat-templates");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("reference.json")).unwrap())
            .unwrap();
    let tokenizer = QwenTokenizer::from_file(&tiny_guard().join("tokenizer.json")).unwrap();
    let mut cases = 0;
    for (name, t) in reference["templates"].as_object().unwrap() {
        let path = fixtures.join(t["file"].as_str().unwrap());
        let template =
            ChatTemplate::new(std::fs::read_to_string(&path).unwrap(), path.clone()).unwrap();
        for case in t["cases"].as_array().unwrap() {
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let role = match m["role"].as_str().unwrap() {
                        "system" => Role::System,
                        "user" => Role::User,
                        _ => Role::Assistant,
                    };
                    let parts = match &m["content"] {
                        serde_json::Value::String(s) => vec![Part::Text(s.clone())],
                        parts => parts
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| match p["type"].as_str().unwrap() {
                                // One pad per image, as the un-expanded text holds.
                                "image" => Part::Image { tokens: 1 },
                                _ => Part::Text(p["text"].as_str().unwrap().to_string()),
                            })
                            .collect(),
                    };
                    Message { role, parts }
                })
                .collect();
            let text = template.render(&messages, true).unwrap();
            let conversation = case["conversation"].as_str().unwrap();
            assert_eq!(
                text,
                case["text"].as_str().unwrap(),
                "{name}/{conversation}"
            );
            let ids: Vec<u64> = tokenizer
                .encode(&text)
                .unwrap()
                .into_iter()
                .map(u64::from)
                .collect();
            let expected: Vec<u64> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(ids, expected, "{name}/{conversation}");
            cases += 1;
        }
    }
    assert_eq!(cases, 8);
}
