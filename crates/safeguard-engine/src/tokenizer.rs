//! The Qwen2.5-VL tokenizer (`tokenizer.json`, byte-level BPE, via the `tokenizers` crate) and
//! chat template.
//!
//! [`render_chat`] reproduces the checkpoint's Jinja chat template (default system prompt
//! "You are a helpful assistant." when the first message is not a system message; each image
//! part becomes `<|vision_start|><|image_pad|><|vision_end|>`), and expands every image's
//! single `<|image_pad|>` into as many as the image has merged tokens, as the Python processor
//! does. [`QwenTokenizer::encode_chat`] then tokenizes the result; special tokens are matched
//! as whole tokens before BPE, so N pads become N ids.

use std::path::{Path, PathBuf};

use crate::EngineError;

/// `<|endoftext|>`.
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// The chat and image markers, shared with the prompts of `safeguard-core`.
pub use safeguard_core::prompt::{IMAGE_PAD, IM_END, IM_START, VISION_END, VISION_START};

/// Default system prompt of the Qwen2.5-VL chat template.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions.
    System,
    /// The request.
    User,
    /// The model's answer.
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One part of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text, inserted verbatim.
    Text(String),
    /// An image that the vision tower turns into `tokens` merged tokens
    /// (`t·h·w / merge²` for its grid).
    Image {
        /// Number of `<|image_pad|>` tokens.
        tokens: usize,
    },
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Content, in order.
    pub parts: Vec<Part>,
}

impl Message {
    /// A message made of one text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            parts: vec![Part::Text(text.into())],
        }
    }
}

/// Renders `messages` with the Qwen2.5-VL chat template, image placeholders already expanded;
/// with `add_generation_prompt`, ends with `<|im_start|>assistant\n`.
pub fn render_chat(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    if messages.first().is_none_or(|m| m.role != Role::System) {
        out.push_str(&format!("{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n"));
    }
    for message in messages {
        out.push_str(IM_START);
        out.push_str(message.role.as_str());
        out.push('\n');
        for part in &message.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Image { tokens } => {
                    out.push_str(VISION_START);
                    out.push_str(&IMAGE_PAD.repeat(*tokens));
                    out.push_str(VISION_END);
                }
            }
        }
        out.push_str(IM_END);
        out.push('\n');
    }
    if add_generation_prompt {
        out.push_str(&format!("{IM_START}assistant\n"));
    }
    out
}

/// Ids of the special tokens, looked up in the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|endoftext|>` (151643).
    pub endoftext: u32,
    /// `<|im_start|>` (151644).
    pub im_start: u32,
    /// `<|im_end|>` (151645).
    pub im_end: u32,
    /// `<|vision_start|>` (151652).
    pub vision_start: u32,
    /// `<|vision_end|>` (151653).
    pub vision_end: u32,
    /// `<|image_pad|>` (151655).
    pub image_pad: u32,
}

/// `[start, end)` byte offsets of a token in the encoded text.
pub type ByteSpan = (usize, usize);

/// A loaded `tokenizer.json` plus its special token ids.
#[derive(Debug, Clone)]
pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    path: PathBuf,
}

impl QwenTokenizer {
    /// Loads `tokenizer.json`; fails if a special token of the chat template is missing.
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        if !path.is_file() {
            return Err(EngineError::MissingFile {
                path: path.to_path_buf(),
                hint: "put the checkpoint's tokenizer.json next to config.json (or run scripts/fetch-tokenizer for the Qwen2.5 tokenizer)".into(),
            });
        }
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|source| EngineError::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_tokenizer(inner, path.to_path_buf())
    }

    /// Wraps an already built tokenizer (`path` is only used in messages).
    pub fn from_tokenizer(
        inner: tokenizers::Tokenizer,
        path: PathBuf,
    ) -> Result<Self, EngineError> {
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| EngineError::Tokenizer {
                    path: path.clone(),
                    source: format!("special token {token} is not in the vocabulary").into(),
                })
        };
        let special = SpecialTokens {
            endoftext: id(ENDOFTEXT)?,
            im_start: id(IM_START)?,
            im_end: id(IM_END)?,
            vision_start: id(VISION_START)?,
            vision_end: id(VISION_END)?,
            image_pad: id(IMAGE_PAD)?,
        };
        Ok(Self {
            inner,
            special,
            path,
        })
    }

    /// The special token ids.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes `text` (special tokens in it are recognised; nothing is added around it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|source| self.error(source))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Tokenizes `text` like [`QwenTokenizer::encode`] and gives each token's byte span in
    /// `text` (what marks the assistant tokens of a training conversation).
    pub fn encode_with_offsets(
        &self,
        text: &str,
    ) -> Result<(Vec<u32>, Vec<ByteSpan>), EngineError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|source| self.error(source))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// Renders and tokenizes a chat (see [`render_chat`]).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, EngineError> {
        self.encode(&render_chat(messages, add_generation_prompt))
    }

    /// Turns ids back into text, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|source| self.error(source))
    }

    /// The id of the single token that `word` encodes to (e.g. `unsafe` → 38157), for scoring
    /// an answer from next-token logits; fails if it takes several tokens.
    pub fn answer_token(&self, word: &str) -> Result<u32, EngineError> {
        match self.encode(word)?.as_slice() {
            [id] => Ok(*id),
            ids => Err(EngineError::Input {
                reason: format!("answer `{word}` is {} tokens, not one: {ids:?}", ids.len()),
            }),
        }
    }

    /// The vocabulary string of a token id (byte-level form, e.g. `Ġyes` for " yes").
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The bytes a token id stands for. Qwen's vocabulary is byte-level BPE (GPT-2's
    /// byte-to-character table), so a token that holds part of a UTF-8 character has bytes that
    /// are no text; added tokens (`<|im_end|>`) are their own UTF-8. `None` for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let token = self.token_str(id)?;
        let is_added = self
            .inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.content == token);
        if is_added {
            return Some(token.into_bytes());
        }
        token
            .chars()
            .map(byte_of_char)
            .collect::<Option<Vec<u8>>>()
            .or(Some(token.into_bytes()))
    }

    /// The id of one token string, if it is a single token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn error(&self, source: tokenizers::Error) -> EngineError {
        EngineError::Tokenizer {
            path: self.path.clone(),
            source,
        }
    }
}

/// The byte that GPT-2's byte-level table maps to `c`: printable Latin-1 bytes (`!`..=`~`,
/// `¡`..=`¬`, `®`..=`ÿ`) stand for themselves, the other 68 bytes for U+0100 onwards in order.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let code = u32::from(c);
    if let Ok(b) = u8::try_from(code) {
        return printable(b).then_some(b);
    }
    let n = usize::try_from(code.checked_sub(256)?).ok()?;
    (0..=255u8).filter(|&b| !printable(b)).nth(n)
}

/// Expands a comma list of token ids where `<image>` stands for the k-th image's block
/// (`vision_start`, `image_pad × tokens[k]`, `vision_end`). Fails on a bad id, or when the
/// number of `<image>` words differs from `tokens.len()`.
pub fn expand_id_list(
    list: &str,
    tokens: &[usize],
    special: (u32, u32, u32),
) -> Result<Vec<u32>, EngineError> {
    let (start, pad, end) = special;
    let mut ids = Vec::new();
    let mut images = 0;
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "<image>" {
            let n = *tokens.get(images).ok_or_else(|| EngineError::Input {
                reason: format!(
                    "--input-ids has more <image> words than the {} --image given",
                    tokens.len()
                ),
            })?;
            ids.push(start);
            ids.extend(std::iter::repeat_n(pad, n));
            ids.push(end);
            images += 1;
        } else {
            let id = item.parse::<u32>().map_err(|_| EngineError::Input {
                reason: format!("--input-ids item `{item}` is neither a token id nor <image>"),
            })?;
            ids.push(id);
        }
    }
    if images != tokens.len() {
        return Err(EngineError::Input {
            reason: format!(
                "--input-ids has {images} <image> words but {} images were given",
                tokens.len()
            ),
        });
    }
    if ids.is_empty() {
        return Err(EngineError::Input {
            reason: "--input-ids is empty".into(),
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::byte_of_char;

    #[test]
    fn byte_level_characters_map_back_to_bytes() {
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
        assert_eq!(byte_of_char('Ċ'), Some(b'\n'));
        assert_eq!(byte_of_char('a'), Some(b'a'));
        assert_eq!(byte_of_char('é'), Some(0xE9));
        // Non-printable bytes are never their own character.
        assert_eq!(byte_of_char(' '), None);
        assert_eq!(byte_of_char('\u{AD}'), None);
        // 256 characters in all: U+0100 + 67 is the last.
        assert_eq!(byte_of_char('\u{143}'), Some(0xAD));
        assert_eq!(byte_of_char('\u{144}'), None);
        let all: std::collections::BTreeSet<u8> = (0..0x200u32)
            .filter_map(char::from_u32)
            .filter_map(byte_of_char)
            .collect();
        assert_eq!(all.len(), 256);
    }
}
