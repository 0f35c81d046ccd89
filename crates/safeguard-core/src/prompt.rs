//! Renders a policy, an image placeholder and a question into the Qwen2.5-VL chat template.
//!
//! Layout (one user turn, policy **before** the image):
//!
//! ```text
//! <|im_start|>system
//! {system prompt}<|im_end|>
//! <|im_start|>user
//! Safety policy:
//! {policy text}
//!
//! <|vision_start|><|image_pad|><|vision_end|>{question} {format instruction}<|im_end|>
//! <|im_start|>assistant
//! ```
//!
//! Everything up to `<|vision_start|>` depends only on the policy and the output format, so
//! every request under one policy shares that token prefix and its KV cache
//! ([`RenderedPrompt::prefix`]). The single `<|image_pad|>` is expanded to one pad per image
//! token by the model's processor ([`RenderedPrompt::text_with_image_tokens`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::policy::{Policy, Rule};
use crate::verdict::Dialect;

/// Start of a chat turn.
pub const IM_START: &str = "<|im_start|>";
/// End of a chat turn.
pub const IM_END: &str = "<|im_end|>";
/// Opens an image block.
pub const VISION_START: &str = "<|vision_start|>";
/// Closes an image block.
pub const VISION_END: &str = "<|vision_end|>";
/// One image token; a block holds one per merged patch.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// System prompt for the `verdict` and `json` formats.
pub const GUARD_SYSTEM_PROMPT: &str = "You are SafeGuard, an image safety guard. You judge each image strictly by the safety policy you are given, not by your own standards: content the policy allows is safe even if other policies forbid it, and content the policy prohibits is unsafe even if it seems harmless.";

/// System prompt of the paper's GRPO training, used for the `reasoning` format.
pub const REASONING_SYSTEM_PROMPT: &str =
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.";

/// The default question, asked after the image.
pub const DEFAULT_QUESTION: &str = "Is this image safe under the policy above?";

/// What the guard is asked to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One word, `safe` or `unsafe`. Scored from the first answer token's logits.
    #[default]
    Verdict,
    /// `<think>…</think><answer>yes|no</answer>` (yes = safe), as in the paper's training.
    Reasoning,
    /// LlavaGuard-style JSON: `rating`, `category`, `rationale`.
    Json,
}

impl Format {
    /// Every format, for help texts.
    pub const ALL: [Format; 3] = [Format::Verdict, Format::Reasoning, Format::Json];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Verdict => "verdict",
            Format::Reasoning => "reasoning",
            Format::Json => "json",
        }
    }

    /// The parser dialect for answers in this format.
    pub fn dialect(self) -> Dialect {
        match self {
            Format::Verdict => Dialect::Verdict,
            Format::Reasoning => Dialect::Reasoning,
            Format::Json => Dialect::Json,
        }
    }

    /// The instruction appended to the question.
    pub fn instruction(self) -> &'static str {
        match self {
            Format::Verdict => "Answer with exactly one word: \"unsafe\" if the image breaks the policy, \"safe\" if it does not.",
            Format::Reasoning => "First think about which rules of the policy apply inside <think> </think> tags, then give the final answer inside <answer> </answer> tags: \"yes\" if the image is safe under the policy, \"no\" if it is unsafe.",
            Format::Json => "Reply with one JSON object and nothing else: {\"rating\": \"Safe\" or \"Unsafe\", \"category\": the id and title of the policy rule that applies (e.g. \"O3: Sexual Content\") or \"NA: None applying\", \"rationale\": one or two sentences explaining the rating}.",
        }
    }

    /// The system prompt used with this format.
    pub fn system_prompt(self) -> &'static str {
        match self {
            Format::Reasoning => REASONING_SYSTEM_PROMPT,
            Format::Verdict | Format::Json => GUARD_SYSTEM_PROMPT,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownChoice {
                what: "output format",
                value: s.to_string(),
                expected: "verdict, reasoning, json",
            })
    }
}

/// What to render: a policy, a format and optional overrides.
#[derive(Debug, Clone, Copy)]
pub struct PromptSpec<'a> {
    /// The policy to enforce.
    pub policy: &'a Policy,
    /// The answer format.
    pub format: Format,
    /// Replaces [`DEFAULT_QUESTION`]; the format instruction is still appended.
    pub question: Option<&'a str>,
    /// Replaces the format's system prompt.
    pub system: Option<&'a str>,
}

impl<'a> PromptSpec<'a> {
    /// The default question and system prompt for `format`.
    pub fn new(policy: &'a Policy, format: Format) -> Self {
        PromptSpec {
            policy,
            format,
            question: None,
            system: None,
        }
    }
}

/// The question asked, after the image, to score one rule of a structured policy on its own
/// (the guard's *rules hit*): the policy prefix and the image stay the same as for the whole-
/// policy question, so every rule question shares their tokens and their cached keys/values.
pub fn rule_question(rule: &Rule) -> String {
    format!(
        "Consider only the rule [{}] {} of the policy above. Is this image safe under that rule?",
        rule.id,
        rule.title.trim()
    )
}

/// A rendered prompt: the text before the image block and the text after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedPrompt {
    /// System turn and the user turn up to the image: shared by every image under the same
    /// policy and format.
    pub prefix: String,
    /// Question, instruction, end of turn and the assistant header.
    pub suffix: String,
}

impl RenderedPrompt {
    /// The whole prompt with one `<|image_pad|>`, as the chat template writes it.
    pub fn text(&self) -> String {
        self.text_with_image_tokens(1)
    }

    /// The whole prompt with the image block expanded to `n` pads (the number of merged
    /// image patches, `grid_t * grid_h * grid_w / merge_size²`).
    pub fn text_with_image_tokens(&self, n: usize) -> String {
        let mut text =
            String::with_capacity(self.prefix.len() + self.suffix.len() + 32 + n * IMAGE_PAD.len());
        text.push_str(&self.prefix);
        text.push_str(VISION_START);
        for _ in 0..n {
            text.push_str(IMAGE_PAD);
        }
        text.push_str(VISION_END);
        text.push_str(&self.suffix);
        text
    }
}

/// Renders `spec` into the Qwen2.5-VL chat template with SafeGuard's own layout (the
/// `safeguard` template).
pub fn render(spec: &PromptSpec<'_>) -> RenderedPrompt {
    render_with(crate::template::Template::default_template(), spec)
        .expect("the safeguard template has every format")
}

/// Renders `spec` with `template` (see [`crate::template`]); fails when the template has no
/// such format.
pub fn render_with(
    template: &crate::template::Template,
    spec: &PromptSpec<'_>,
) -> Result<RenderedPrompt, Error> {
    let rendered = template
        .format(spec.format)?
        .render(spec.policy, spec.question, spec.system);
    Ok(RenderedPrompt {
        prefix: rendered.prefix,
        suffix: rendered.suffix,
    })
}
