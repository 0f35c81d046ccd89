//! Verdicts and the one parser for every guard output format we meet.
//!
//! [`parse`] turns model output into a [`Parsed`] verdict or a typed [`NoVerdict`] that says
//! why none could be read. It never guesses a default: the caller picks the fallback with
//! [`OnUnparsable`].
//!
//! Formats ([`Dialect`]):
//! - bare words: `safe` / `unsafe` (also `Answer: unsafe`, `**Unsafe**.`, or a sentence that
//!   mentions exactly one of the two words without negation);
//! - reasoning: `<think>…</think><answer>yes|no</answer>`, where **yes = safe** and
//!   **no = unsafe** (the paper's training format; `safe`/`unsafe` inside the answer are also
//!   read);
//! - LlavaGuard JSON: `{"rating": "Safe"|"Unsafe", "category": "O3: …", "rationale": …}`,
//!   also inside a ```json fence;
//! - Llama Guard: `safe`, or `unsafe` followed by a line of categories `S1,S3`;
//! - ShieldGemma: `Yes` (**violates** the policy = unsafe) or `No` (safe).
//!
//! Bare `yes`/`no` mean opposite things in the reasoning and ShieldGemma formats, so
//! [`Dialect::Auto`] refuses to read them ([`NoVerdict::AmbiguousYesNo`]).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The guard's decision about one image under one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allowed under the policy.
    Safe,
    /// Breaks the policy.
    Unsafe,
}

impl Verdict {
    /// `"safe"` or `"unsafe"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Unsafe => "unsafe",
        }
    }

    /// `true` for [`Verdict::Unsafe`], the positive class of every metric.
    pub fn is_unsafe(self) -> bool {
        self == Verdict::Unsafe
    }

    /// Reads a label as written in datasets and prediction files: `safe`/`unsafe`
    /// (any case) or `0`/`1` (1 = unsafe).
    pub fn from_label(label: &str) -> Option<Verdict> {
        match label.trim().to_ascii_lowercase().as_str() {
            "safe" | "0" => Some(Verdict::Safe),
            "unsafe" | "1" => Some(Verdict::Unsafe),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which output format to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// Detect the format from the text.
    Auto,
    /// One word, `safe` or `unsafe`.
    Verdict,
    /// `<think>…</think><answer>yes|no</answer>` with yes = safe.
    Reasoning,
    /// LlavaGuard JSON with a `rating`.
    Json,
    /// `safe` or `unsafe\nS1,S2`.
    LlamaGuard,
    /// `Yes` (violates: unsafe) or `No` (safe).
    ShieldGemma,
}

/// A verdict read from model output, with what else the output said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parsed {
    /// The decision.
    pub verdict: Verdict,
    /// Category or rule ids the output named (LlavaGuard `O3`, Llama Guard `S1`…).
    pub categories: Vec<String>,
    /// The model's explanation: the think block or the JSON rationale.
    pub rationale: Option<String>,
    /// The format the verdict was read in.
    pub dialect: Dialect,
}

/// Why no verdict could be read from an output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NoVerdict {
    /// The output was empty or only whitespace.
    Empty,
    /// A reasoning output without an `<answer>` block.
    MissingAnswer,
    /// An answer block or JSON rating whose value is not a verdict.
    UnknownAnswer {
        /// The value found.
        answer: String,
    },
    /// The output mentions both verdicts, or negates one.
    Ambiguous,
    /// A bare `yes`/`no` without a dialect saying what it means.
    AmbiguousYesNo,
    /// JSON that does not parse or has no `rating`.
    BadJson {
        /// What is wrong.
        message: String,
    },
    /// Nothing in the output looks like a verdict.
    Unrecognized,
}

impl fmt::Display for NoVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoVerdict::Empty => f.write_str("the output is empty"),
            NoVerdict::MissingAnswer => f.write_str("no <answer>…</answer> block"),
            NoVerdict::UnknownAnswer { answer } => {
                write!(f, "answer {answer:?} is not a verdict")
            }
            NoVerdict::Ambiguous => f.write_str("the output names both verdicts or negates one"),
            NoVerdict::AmbiguousYesNo => f.write_str(
                "a bare yes/no needs a dialect (reasoning: yes = safe; shieldgemma: yes = unsafe)",
            ),
            NoVerdict::BadJson { message } => write!(f, "invalid guard JSON: {message}"),
            NoVerdict::Unrecognized => f.write_str("no verdict found in the output"),
        }
    }
}

/// What to do when no verdict can be read (`--on-unparsable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnparsable {
    /// Count it as safe (what the paper's public evaluation does).
    Safe,
    /// Count it as unsafe (fail closed).
    Unsafe,
    /// Report the item as unassessed.
    #[default]
    Error,
}

impl OnUnparsable {
    /// Applies the fallback to a parse result.
    pub fn apply(self, parsed: Result<Parsed, NoVerdict>) -> Result<Verdict, NoVerdict> {
        match (parsed, self) {
            (Ok(p), _) => Ok(p.verdict),
            (Err(_), OnUnparsable::Safe) => Ok(Verdict::Safe),
            (Err(_), OnUnparsable::Unsafe) => Ok(Verdict::Unsafe),
            (Err(e), OnUnparsable::Error) => Err(e),
        }
    }
}

impl FromStr for OnUnparsable {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "safe" => Ok(OnUnparsable::Safe),
            "unsafe" => Ok(OnUnparsable::Unsafe),
            "error" => Ok(OnUnparsable::Error),
            _ => Err(Error::UnknownChoice {
                what: "fallback",
                value: s.to_string(),
                expected: "safe, unsafe, error",
            }),
        }
    }
}

/// Reads a verdict from model output in the given dialect.
pub fn parse(output: &str, dialect: Dialect) -> Result<Parsed, NoVerdict> {
    let text = clean(output);
    if text.is_empty() {
        return Err(NoVerdict::Empty);
    }
    match dialect {
        Dialect::Verdict => parse_words(text),
        Dialect::Reasoning => parse_reasoning(text),
        Dialect::Json => parse_json(text),
        Dialect::LlamaGuard => parse_llama_guard(text),
        Dialect::ShieldGemma => parse_shieldgemma(text),
        Dialect::Auto => parse_auto(text),
    }
}

fn parse_auto(text: &str) -> Result<Parsed, NoVerdict> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("<answer>") || lower.contains("<think>") {
        return parse_reasoning(text);
    }
    if text.contains('{') && lower.contains("rating") {
        return parse_json(text);
    }
    if let Ok(parsed) = parse_llama_guard(text) {
        if !parsed.categories.is_empty() {
            return Ok(parsed);
        }
    }
    if matches!(first_word(text).as_deref(), Some("yes" | "no")) {
        return Err(NoVerdict::AmbiguousYesNo);
    }
    parse_words(text)
}

/// Strips whitespace, chat special tokens (`<|im_end|>`…) and a surrounding code fence.
fn clean(output: &str) -> &str {
    let mut text = output.trim();
    while let Some(stripped) = strip_special_suffix(text) {
        text = stripped.trim_end();
    }
    if let Some(inner) = text.strip_prefix("```") {
        let inner = inner.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        text = inner.strip_suffix("```").unwrap_or(inner).trim();
    }
    text
}

fn strip_special_suffix(text: &str) -> Option<&str> {
    let body = text.strip_suffix("|>")?;
    let start = body.rfind("<|")?;
    Some(&text[..start])
}

/// Lowercase words of the text (letters only), with the markdown and punctuation around them
/// removed.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
}

fn first_word(text: &str) -> Option<String> {
    words(text).next()
}

fn word_verdict(word: &str) -> Option<Verdict> {
    match word {
        "safe" => Some(Verdict::Safe),
        "unsafe" => Some(Verdict::Unsafe),
        _ => None,
    }
}

fn found(verdict: Verdict, dialect: Dialect) -> Parsed {
    Parsed {
        verdict,
        categories: Vec::new(),
        rationale: None,
        dialect,
    }
}

fn parse_words(text: &str) -> Result<Parsed, NoVerdict> {
    let all: Vec<String> = words(text).take(4096).collect();
    // `safe`, `Unsafe.`, `**unsafe**`, `Answer: safe`, `Verdict - unsafe`.
    let lead = match all.first().map(String::as_str) {
        Some("answer" | "verdict" | "rating" | "final" | "assessment") => {
            all.iter().skip(1).find(|w| w.as_str() != "answer")
        }
        _ => all.first(),
    };
    let negated = |w: &String| matches!(w.as_str(), "not" | "no" | "isn't" | "never" | "neither");
    if let Some(verdict) = lead.and_then(|w| word_verdict(w)) {
        let rest_mentions_other = all
            .iter()
            .skip(1)
            .filter_map(|w| word_verdict(w))
            .any(|v| v != verdict);
        if !rest_mentions_other {
            return Ok(found(verdict, Dialect::Verdict));
        }
    }
    // A sentence: "The image is unsafe under this policy."
    let mentioned: Vec<Verdict> = all.iter().filter_map(|w| word_verdict(w)).collect();
    let Some(&first) = mentioned.first() else {
        return Err(NoVerdict::Unrecognized);
    };
    if mentioned.iter().any(|&v| v != first) || all.iter().any(negated) {
        return Err(NoVerdict::Ambiguous);
    }
    Ok(found(first, Dialect::Verdict))
}

fn tag_regex(tag: &str) -> Regex {
    Regex::new(&format!(r"(?is)<{tag}>(.*?)</{tag}>")).expect("static regex")
}

fn think_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| tag_regex("think"))
}

fn answer_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| tag_regex("answer"))
}

/// The content of the first `<think>…</think>` block, if any.
pub fn think_block(text: &str) -> Option<&str> {
    think_re()
        .captures(text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
}

/// The content of the first `<answer>…</answer>` block, if any.
pub fn answer_block(text: &str) -> Option<&str> {
    answer_re()
        .captures(text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
}

/// Reads a reasoning answer: `yes` = safe, `no` = unsafe (also `safe`/`unsafe`).
pub fn reasoning_answer(answer: &str) -> Option<Verdict> {
    let all: Vec<String> = words(answer).take(8).collect();
    match all.as_slice() {
        [w] => match w.as_str() {
            "yes" | "safe" => Some(Verdict::Safe),
            "no" | "unsafe" => Some(Verdict::Unsafe),
            _ => None,
        },
        _ => None,
    }
}

fn parse_reasoning(text: &str) -> Result<Parsed, NoVerdict> {
    let rationale = think_block(text).map(|t| t.trim().to_string());
    let answer = match answer_block(text) {
        Some(answer) => answer,
        None => {
            // Generation cut at the stop token: `<answer>yes` without its closing tag.
            let lower = text.to_ascii_lowercase();
            let start = lower.rfind("<answer>").ok_or(NoVerdict::MissingAnswer)?;
            &text[start + "<answer>".len()..]
        }
    };
    let verdict = reasoning_answer(answer).ok_or_else(|| NoVerdict::UnknownAnswer {
        answer: truncate(answer.trim(), 80),
    })?;
    Ok(Parsed {
        verdict,
        categories: Vec::new(),
        rationale,
        dialect: Dialect::Reasoning,
    })
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

fn parse_json(text: &str) -> Result<Parsed, NoVerdict> {
    let (Some(start), Some(end)) = (text.find('{'), text.rfind('}')) else {
        return Err(NoVerdict::BadJson {
            message: "no JSON object".to_string(),
        });
    };
    if end < start {
        return Err(NoVerdict::BadJson {
            message: "no JSON object".to_string(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(&text[start..=end]).map_err(|e| NoVerdict::BadJson {
            message: e.to_string(),
        })?;
    let object = value.as_object().ok_or_else(|| NoVerdict::BadJson {
        message: "not a JSON object".to_string(),
    })?;
    let field = |name: &str| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    };
    let rating = field("rating").ok_or_else(|| NoVerdict::BadJson {
        message: "no string field \"rating\"".to_string(),
    })?;
    let verdict = match rating.trim().to_ascii_lowercase().as_str() {
        "safe" => Verdict::Safe,
        "unsafe" => Verdict::Unsafe,
        _ => {
            return Err(NoVerdict::UnknownAnswer {
                answer: truncate(rating, 80),
            })
        }
    };
    let categories = field("category")
        .and_then(category_id)
        .into_iter()
        .collect();
    Ok(Parsed {
        verdict,
        categories,
        rationale: field("rationale").map(|r| r.trim().to_string()),
        dialect: Dialect::Json,
    })
}

/// `"O3: Sexual Content"` → `O3`; `"NA: None applying"` → none.
fn category_id(category: &str) -> Option<String> {
    let id = category.split(':').next()?.trim();
    if id.is_empty() || id.eq_ignore_ascii_case("na") || id.eq_ignore_ascii_case("none") {
        return None;
    }
    Some(id.to_string())
}

fn parse_llama_guard(text: &str) -> Result<Parsed, NoVerdict> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().ok_or(NoVerdict::Empty)?;
    let verdict = word_verdict(&first.to_ascii_lowercase()).ok_or(NoVerdict::Unrecognized)?;
    let categories: Vec<String> = match (verdict, lines.next()) {
        (Verdict::Unsafe, Some(line)) => line
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let well_formed = categories
        .iter()
        .all(|c| c.len() <= 8 && c.chars().all(|ch| ch.is_ascii_alphanumeric()));
    if lines.next().is_some() || !well_formed {
        return Err(NoVerdict::Unrecognized);
    }
    Ok(Parsed {
        verdict,
        categories,
        rationale: None,
        dialect: Dialect::LlamaGuard,
    })
}

fn parse_shieldgemma(text: &str) -> Result<Parsed, NoVerdict> {
    match first_word(text).as_deref() {
        Some("yes") => Ok(found(Verdict::Unsafe, Dialect::ShieldGemma)),
        Some("no") => Ok(found(Verdict::Safe, Dialect::ShieldGemma)),
        _ => Err(NoVerdict::Unrecognized),
    }
}
