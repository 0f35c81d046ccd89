//! SFT data: JSONL conversations with images, tokenised with the Qwen2.5-VL chat template and
//! the loss mask on assistant tokens.
//!
//! Each line is one example in either layout:
//!
//! - **conversation** (ms-swift, LLaMA-Factory): `{"messages": [{"role": "user", "content":
//!   "<image>Describe the image."}, {"role": "assistant", "content": "A red car …"}],
//!   "images": ["a.jpg"]}` (or `"image": "a.jpg"`). Each `<image>` in a message takes the
//!   next image; roles are `system`, `user`, `assistant`; an optional leading system message
//!   replaces the default one.
//! - **simple**: `{"image": "a.jpg", "prompt": "Describe the image.", "target": "A red car …"}`
//!   (the image goes before the prompt in the user turn).
//!
//! Relative image paths are resolved against `image_root` (default: the data file's folder).
//! The chat is rendered as the Qwen2.5-VL template renders it (transformers'
//! `apply_chat_template`), each image expanded to `<|vision_start|>`, `<|image_pad|>` × n,
//! `<|vision_end|>`. **Targets** are the tokens of every assistant message's content and its
//! `<|im_end|>` (not the role header, not the newline after): what ms-swift and TRL's
//! `assistant_only_loss` train on.

use std::path::{Path, PathBuf};

use safeguard_engine::tokenizer::{
    QwenTokenizer, DEFAULT_SYSTEM, IMAGE_PAD, IM_END, IM_START, VISION_END, VISION_START,
};
use serde::Deserialize;

use crate::error::{io, Result, TrainError};

/// A message of the conversation layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    role: String,
    content: String,
}

/// One JSONL line, either layout (checked after parsing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExample {
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    images: Option<Vec<String>>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    target: Option<String>,
    /// Free-form id, kept for messages.
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Who speaks in an [`Example`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// System prompt.
    System,
    /// User turn.
    User,
    /// Assistant turn (trained on).
    Assistant,
}

/// A parsed example: messages (with `<image>` placeholders) and image paths.
#[derive(Debug, Clone)]
pub struct Example {
    /// `(speaker, content)`.
    pub messages: Vec<(Speaker, String)>,
    /// Resolved image paths, in placeholder order.
    pub images: Vec<PathBuf>,
    /// 1-based line in the data file.
    pub line: usize,
}

/// The image placeholder in message text.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Reads a JSONL file of examples. Blank lines are skipped; anything else that is not a valid
/// example fails naming the line.
pub fn read_jsonl(path: &Path, image_root: Option<&Path>) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let root = image_root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TrainError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let raw: RawExample =
            serde_json::from_str(line).map_err(|e| bad(format!("not a training example: {e}")))?;
        let _ = &raw.id;
        out.push(parse(raw, &root, i + 1).map_err(bad)?);
    }
    if out.is_empty() {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            line: 0,
            reason: "no examples".into(),
        });
    }
    Ok(out)
}

fn parse(raw: RawExample, root: &Path, line: usize) -> Result<Example, String> {
    let resolve = |p: &String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            root.join(p)
        }
    };
    let mut images: Vec<PathBuf> = Vec::new();
    match (&raw.images, &raw.image) {
        (Some(_), Some(_)) => return Err("give `images` or `image`, not both".into()),
        (Some(list), None) => images.extend(list.iter().map(resolve)),
        (None, Some(one)) => images.push(resolve(one)),
        (None, None) => {}
    }
    let messages = match (raw.messages, raw.prompt, raw.target) {
        (Some(messages), None, None) => {
            let mut out = Vec::with_capacity(messages.len());
            for (k, m) in messages.into_iter().enumerate() {
                let speaker = match m.role.as_str() {
                    "system" if k == 0 => Speaker::System,
                    "system" => {
                        return Err(format!("message {k}: a system message must come first"))
                    }
                    "user" => Speaker::User,
                    "assistant" => Speaker::Assistant,
                    other => {
                        return Err(format!(
                            "message {k}: role `{other}` (use system, user or assistant)"
                        ))
                    }
                };
                out.push((speaker, m.content));
            }
            out
        }
        (None, Some(prompt), Some(target)) => {
            let user = if images.is_empty() {
                prompt
            } else {
                format!("{}{prompt}", IMAGE_PLACEHOLDER.repeat(images.len()))
            };
            vec![(Speaker::User, user), (Speaker::Assistant, target)]
        }
        (None, _, _) => {
            return Err("needs `messages`, or `prompt` and `target`".into());
        }
        (Some(_), _, _) => return Err("give `messages` or `prompt`/`target`, not both".into()),
    };
    if !messages
        .iter()
        .any(|(s, c)| *s == Speaker::Assistant && !c.is_empty())
    {
        return Err("no assistant message to train on".into());
    }
    let placeholders: usize = messages
        .iter()
        .map(|(_, c)| c.matches(IMAGE_PLACEHOLDER).count())
        .sum();
    if placeholders != images.len() {
        return Err(format!(
            "{placeholders} `{IMAGE_PLACEHOLDER}` placeholders but {} images",
            images.len()
        ));
    }
    if messages
        .iter()
        .any(|(s, c)| *s == Speaker::Assistant && c.contains(IMAGE_PLACEHOLDER))
    {
        return Err("an image in an assistant message".into());
    }
    Ok(Example {
        messages,
        images,
        line,
    })
}

/// An example ready for the model: token ids, target flags, image paths.
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// Token ids of the whole conversation, images expanded.
    pub input_ids: Vec<u32>,
    /// `targets[i]`: token `i` counts in the loss.
    pub targets: Vec<bool>,
    /// Images in order.
    pub images: Vec<PathBuf>,
    /// Line in the data file.
    pub line: usize,
}

impl Tokenized {
    /// Target tokens.
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|&&t| t).count()
    }
}

/// Renders `example` with the chat template (image `k` expanded to `image_tokens[k]` pads)
/// and tokenises it, marking assistant content and its `<|im_end|>` as targets.
pub fn tokenize(
    tokenizer: &QwenTokenizer,
    example: &Example,
    image_tokens: &[usize],
) -> Result<Tokenized, String> {
    if image_tokens.len() != example.images.len() {
        return Err(format!(
            "{} image token counts for {} images",
            image_tokens.len(),
            example.images.len()
        ));
    }
    let mut text = String::new();
    let mut spans = Vec::new();
    if example.messages.first().map(|m| m.0) != Some(Speaker::System) {
        text.push_str(&format!("{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n"));
    }
    let mut next_image = 0;
    for (speaker, content) in &example.messages {
        let role = match speaker {
            Speaker::System => "system",
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
        };
        text.push_str(&format!("{IM_START}{role}\n"));
        let start = text.len();
        let mut rest = content.as_str();
        while let Some(at) = rest.find(IMAGE_PLACEHOLDER) {
            text.push_str(&rest[..at]);
            text.push_str(VISION_START);
            text.push_str(&IMAGE_PAD.repeat(image_tokens[next_image]));
            text.push_str(VISION_END);
            next_image += 1;
            rest = &rest[at + IMAGE_PLACEHOLDER.len()..];
        }
        text.push_str(rest);
        text.push_str(IM_END);
        if *speaker == Speaker::Assistant {
            spans.push((start, text.len()));
        }
        text.push('\n');
    }
    let (input_ids, offsets) = tokenizer
        .encode_with_offsets(&text)
        .map_err(|e| e.to_string())?;
    let targets: Vec<bool> = offsets
        .iter()
        .map(|&(s, e)| e > s && spans.iter().any(|&(a, b)| s >= a && e <= b))
        .collect();
    if targets.first() == Some(&true) {
        return Err("the first token is a target".into());
    }
    Ok(Tokenized {
        input_ids,
        targets,
        images: example.images.clone(),
        line: example.line,
    })
}
