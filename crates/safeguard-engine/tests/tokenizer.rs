//! Chat template, image-placeholder expansion and tokenization.
//!
//! The tests marked `#[ignore]` need the real Qwen2.5 tokenizer: run `scripts/fetch-tokenizer`
//! first, then `cargo test -p safeguard-engine -- --ignored tokenizer`.

use std::collections::HashMap;
use std::path::PathBuf;

use safeguard_engine::tokenizer::{
    expand_id_list, render_chat, Message, Part, QwenTokenizer, Role,
};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, Tokenizer};

const SPECIALS: [&str; 7] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
];

/// A word-level tokenizer with the Qwen special tokens at 100.. and a few words.
fn toy_tokenizer() -> QwenTokenizer {
    let mut vocab: HashMap<String, u32> = [
        "[UNK]",
        "system",
        "user",
        "assistant",
        "You",
        "are",
        "a",
        "helpful",
        "assistant.",
        "Is",
        "it",
        "safe?",
    ]
    .iter()
    .enumerate()
    .map(|(i, w)| (w.to_string(), i as u32))
    .collect();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), 100 + i as u32);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let added: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&added);
    QwenTokenizer::from_tokenizer(tok, PathBuf::from("toy")).unwrap()
}

fn user_with_image(tokens: usize) -> Vec<Message> {
    vec![Message {
        role: Role::User,
        parts: vec![Part::Image { tokens }, Part::Text("Is it safe?".into())],
    }]
}

#[test]
fn chat_template_matches_qwen25vl_with_default_system_prompt() {
    let text = render_chat(&user_with_image(2), true);
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
         <|vision_start|><|image_pad|><|image_pad|><|vision_end|>Is it safe?<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_system = [
        Message::text(Role::System, "Be strict."),
        Message::text(Role::User, "hi"),
    ];
    assert_eq!(
        render_chat(&with_system, false),
        "<|im_start|>system\nBe strict.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    );
}

#[test]
fn image_placeholder_expands_to_one_pad_per_merged_token() {
    let tok = toy_tokenizer();
    let s = tok.special();
    let ids = tok.encode_chat(&user_with_image(7), true).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == s.image_pad).count(), 7);
    let start = ids.iter().position(|&i| i == s.vision_start).unwrap();
    assert_eq!(ids[start + 8], s.vision_end);
    assert_eq!(&ids[ids.len() - 2..], &[s.im_start, 3]); // `<|im_start|>assistant`
    assert_eq!(
        tok.decode(&ids[start..start + 2], false)
            .unwrap()
            .replace(' ', ""),
        "<|vision_start|><|image_pad|>"
    );
}

#[test]
fn missing_special_tokens_are_reported() {
    let model = WordLevel::builder()
        .vocab([("[UNK]".to_string(), 0u32)].into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let err = QwenTokenizer::from_tokenizer(Tokenizer::new(model), PathBuf::from("t.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("<|endoftext|>") && err.contains("t.json"),
        "{err}"
    );
}

#[test]
fn id_lists_expand_image_words_in_order() {
    let ids = expand_id_list("1, <image>,2,<image>", &[2, 1], (10, 11, 12)).unwrap();
    assert_eq!(ids, vec![1, 10, 11, 11, 12, 2, 10, 11, 12]);
    assert!(expand_id_list("1,<image>", &[], (10, 11, 12)).is_err());
    assert!(expand_id_list("1,2", &[3], (10, 11, 12)).is_err());
    assert!(expand_id_list("1,-2", &[], (10, 11, 12)).is_err());
    assert!(expand_id_list("", &[], (10, 11, 12)).is_err());
}

fn real_tokenizer() -> QwenTokenizer {
    let path = std::env::var_os("SAFEGUARD_QWEN_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/assets/qwen-tokenizer/tokenizer.json")
        });
    QwenTokenizer::from_file(&path).unwrap()
}

#[test]
#[ignore = "needs scripts/fetch-tokenizer"]
fn real_tokenizer_special_ids_match_qwen25() {
    let tok = real_tokenizer();
    let s = tok.special();
    assert_eq!(
        (
            s.endoftext,
            s.im_start,
            s.im_end,
            s.vision_start,
            s.vision_end,
            s.image_pad
        ),
        (151643, 151644, 151645, 151652, 151653, 151655)
    );
    assert_eq!(tok.token_id("<|video_pad|>"), Some(151656));
    assert_eq!(
        tok.token_id("<think>"),
        None,
        "Qwen3's added tokens must be dropped"
    );
    assert_eq!(tok.vocab_size(), 151665);
}

#[test]
#[ignore = "needs scripts/fetch-tokenizer"]
fn real_tokenizer_encodes_chat_like_the_reference() {
    let tok = real_tokenizer();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![9707, 1879]);
    let messages = vec![Message {
        role: Role::User,
        parts: vec![
            Part::Image { tokens: 2 },
            Part::Text("Is this image safe?".into()),
        ],
    }];
    // Ids from the Python `tokenizers` on the same file and text.
    let expected = vec![
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652,
        151655, 151655, 151653, 3872, 419, 2168, 6092, 30, 151645, 198, 151644, 77091, 198,
    ];
    assert_eq!(tok.encode_chat(&messages, true).unwrap(), expected);
    assert_eq!(tok.encode(" unsafe safe").unwrap(), vec![19860, 6092]);
    assert_eq!(tok.answer_token("unsafe").unwrap(), 38157);
    assert_eq!(tok.answer_token("safe").unwrap(), 18675);
    assert!(tok.answer_token("unsafe content").is_err());
    let text = tok.decode(&expected, false).unwrap();
    assert_eq!(text, render_chat(&messages, true));
}

#[test]
fn answer_tokens_must_be_single_tokens() {
    let tok = toy_tokenizer();
    assert_eq!(tok.answer_token("helpful").unwrap(), 7);
    let err = tok.answer_token("Is it").unwrap_err().to_string();
    assert!(err.contains("2 tokens"), "{err}");
}
