//! The chat-completions wire format: the request body we send, the parts of the response we
//! read, and the error message inside an error response.
//!
//! The texts come from [`safeguard_core::prompt::render`], split at the chat template's turn
//! markers, so the remote backend asks exactly what the local one asks.

use safeguard_core::prompt::{self, Format, PromptSpec, IM_END, IM_START};
use safeguard_core::{Error, Policy};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::NAME;

/// The texts of one chat request, cut out of the rendered Qwen2.5-VL prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPieces {
    /// The system turn's content.
    pub system: String,
    /// The user turn before the image: `Safety policy:\n{policy}\n\n`.
    pub policy_block: String,
    /// The user turn after the image: `{question} {instruction}`.
    pub question: String,
}

/// The pieces for `policy` and `format`, asking `question` (the default question if `None`).
pub fn chat_pieces(
    policy: &Policy,
    format: Format,
    question: Option<&str>,
) -> Result<ChatPieces, Error> {
    let spec = PromptSpec {
        question,
        ..PromptSpec::new(policy, format)
    };
    let rendered = prompt::render(&spec);
    let system_head = format!("{IM_START}system\n");
    let user_head = format!("{IM_END}\n{IM_START}user\n");
    let assistant_head = format!("{IM_END}\n{IM_START}assistant\n");
    let split = rendered
        .prefix
        .strip_prefix(&system_head)
        .and_then(|rest| rest.split_once(&user_head));
    let question = rendered.suffix.strip_suffix(&assistant_head);
    match (split, question) {
        (Some((system, policy_block)), Some(question)) => Ok(ChatPieces {
            system: system.to_string(),
            policy_block: policy_block.to_string(),
            question: question.to_string(),
        }),
        _ => Err(Error::Backend {
            backend: NAME.to_string(),
            message: "safeguard_core::prompt::render no longer writes the turn markers this backend splits on; update safeguard-remote's wire::chat_pieces".to_string(),
        }),
    }
}

/// What the server is asked to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One token, with the top 20 logprobs of it.
    Score,
    /// Free text up to `max_tokens` tokens.
    Generate {
        /// The `max_tokens` field.
        max_tokens: u32,
    },
}

/// Logprobs asked for per position in score mode (vLLM's default `max_logprobs` is 20).
pub const TOP_LOGPROBS: u32 = 20;

/// The JSON body of one chat-completions request.
pub fn request_body(model: &str, pieces: &ChatPieces, data_url: &str, mode: Mode) -> Value {
    let messages = json!([
        {"role": "system", "content": pieces.system},
        {"role": "user", "content": [
            {"type": "text", "text": pieces.policy_block},
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": pieces.question},
        ]},
    ]);
    match mode {
        Mode::Score => json!({
            "model": model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": TOP_LOGPROBS,
        }),
        Mode::Generate { max_tokens } => json!({
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
        }),
    }
}

/// The parts of a chat-completions response this backend reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatResponse {
    /// The choices; the first one is used.
    pub choices: Vec<Choice>,
}

/// One choice of a response.
#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    /// The generated message.
    pub message: Message,
    /// Per-token logprobs, when asked for and supported.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length`, …
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The generated message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// The text; `null` from some servers when empty.
    #[serde(default)]
    pub content: Option<String>,
}

/// The `logprobs` object of a choice.
#[derive(Debug, Clone, Deserialize)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    #[serde(default)]
    pub content: Option<Vec<TokenLogprob>>,
}

/// A generated token and the most likely alternatives at its position.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f64,
    /// The most likely tokens at this position.
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative at a position.
#[derive(Debug, Clone, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f64,
}

impl TokenLogprob {
    /// The candidates at this position: the top logprobs, plus the generated token when the
    /// server did not list it among them. Each token once.
    pub fn candidates(&self) -> Vec<(&str, f64)> {
        let mut out: Vec<(&str, f64)> = self
            .top_logprobs
            .iter()
            .map(|t| (t.token.as_str(), t.logprob))
            .collect();
        if !out.iter().any(|(t, _)| *t == self.token) {
            out.push((self.token.as_str(), self.logprob));
        }
        out
    }
}

impl Choice {
    /// The first generated position's logprobs, if the server sent any.
    pub fn first_position(&self) -> Option<&TokenLogprob> {
        self.logprobs.as_ref()?.content.as_ref()?.first()
    }
}

/// Longest server message quoted in an error.
pub const MAX_SERVER_MESSAGE: usize = 300;

/// The message of an error response: `error.message` (OpenAI), `message` (vLLM) or
/// `detail`, else the body itself; truncated to [`MAX_SERVER_MESSAGE`] characters.
pub fn server_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let message = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"))?;
        Some(match message {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    truncate(&text, MAX_SERVER_MESSAGE)
}

/// At most `max` characters of `text`, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safeguard_core::policy::presets;

    #[test]
    fn pieces_reassemble_into_the_rendered_prompt() {
        let policy = presets::get("L3").unwrap();
        let rule = policy.prohibited().next().unwrap();
        let rule_q = prompt::rule_question(rule);
        for format in Format::ALL {
            for question in [None, Some(rule_q.as_str())] {
                let pieces = chat_pieces(&policy, format, question).unwrap();
                let spec = PromptSpec {
                    question,
                    ..PromptSpec::new(&policy, format)
                };
                let rendered = prompt::render(&spec);
                assert_eq!(
                    rendered.prefix,
                    format!(
                        "{IM_START}system\n{}{IM_END}\n{IM_START}user\n{}",
                        pieces.system, pieces.policy_block
                    )
                );
                assert_eq!(
                    rendered.suffix,
                    format!("{}{IM_END}\n{IM_START}assistant\n", pieces.question)
                );
                assert_eq!(pieces.system, format.system_prompt());
                assert!(pieces.policy_block.starts_with("Safety policy:\n"));
                assert!(pieces.question.ends_with(format.instruction()));
            }
        }
    }

    #[test]
    fn score_and_generate_bodies() {
        let policy = presets::get("L1").unwrap();
        let pieces = chat_pieces(&policy, Format::Verdict, None).unwrap();
        let body = request_body("m", &pieces, "data:image/png;base64,AA==", Mode::Score);
        assert_eq!(body["max_tokens"], 1);
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 20);
        assert_eq!(body["messages"][1]["content"][1]["type"], "image_url");
        let body = request_body("m", &pieces, "data:,", Mode::Generate { max_tokens: 512 });
        assert_eq!(body["max_tokens"], 512);
        assert!(body.get("logprobs").is_none());
    }

    #[test]
    fn server_messages_are_found_and_truncated() {
        assert_eq!(
            server_message(r#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(
            server_message(r#"{"object":"error","message":"too long","code":400}"#),
            "too long"
        );
        assert_eq!(server_message("plain text\n"), "plain text");
        let long = "x".repeat(1000);
        assert_eq!(
            server_message(&long).chars().count(),
            MAX_SERVER_MESSAGE + 1
        );
    }

    #[test]
    fn the_generated_token_joins_the_candidates_once() {
        let t: TokenLogprob = serde_json::from_value(json!({
            "token": "unsafe", "logprob": -0.2,
            "top_logprobs": [{"token": "unsafe", "logprob": -0.2}, {"token": "safe", "logprob": -1.8}]
        }))
        .unwrap();
        assert_eq!(t.candidates().len(), 2);
        let t: TokenLogprob =
            serde_json::from_value(json!({"token": "unsafe", "logprob": -0.2})).unwrap();
        assert_eq!(t.candidates(), vec![("unsafe", -0.2)]);
    }
}
