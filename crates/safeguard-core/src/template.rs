//! Guard prompt templates: where the system prompt, the policy, the image and the question go,
//! which words score mode compares, and how the answer is parsed.
//!
//! A guard answers best when prompted the way it was trained. SafeGuard's own layout
//! ([`Template::SAFEGUARD`], the default) puts the policy **before** the image, so that every
//! image under one policy shares a token prefix and its cached keys/values. Published guards
//! were trained otherwise: QwenGuard (LlavaGuard's recipe on Qwen2.5-VL) and SafeGuard-VL put the
//! image first, with no system message (so the chat template's default system prompt applies)
//! and their own wording. With the image first only the system part is shared between images;
//! the prefix cache then covers just that (`safeguard bench` shows the difference).
//!
//! Built-ins ([`Template::builtin`]):
//!
//! | name | system | user turn | formats |
//! | --- | --- | --- | --- |
//! | `safeguard` | SafeGuard's guard prompt (reasoning: the paper's R1 prompt) | policy, image, question + instruction | verdict, reasoning, json |
//! | `plain` | the chat template's default | image, policy, question + instruction | verdict, reasoning, json |
//! | `safeguard-vl` | the chat template's default | image, then the SafeGuard-VL model card's prompt around the policy | verdict, reasoning |
//! | `llavaguard` | the chat template's default | image, then LlavaGuard's assessment prompt around the policy (JSON answer) | verdict, json |
//!
//! A template file (TOML, [`Template::from_toml`]) has a `name` and one table per format it
//! supports (`[verdict]`, `[reasoning]`, `[json]`), each with:
//!
//! - `user`: the user turn, with exactly one `{image}`, and `{policy}` (the policy's prompt
//!   text) and `{question}` (the question and the instruction) where they go;
//! - `system` (optional): the system prompt; absent = the chat template's default
//!   ("You are a helpful assistant.");
//! - `question` (optional, default [`crate::prompt::DEFAULT_QUESTION`]): replaced by each
//!   rule's own question when score mode asks the rules one by one;
//! - `instruction` (optional, default empty): appended to every question;
//! - `safe`, `unsafe` (optional, default `safe`/`unsafe`): the answer words; score mode
//!   compares the logits of their first tokens, reason mode reads the score where one is written;
//! - `parser` (optional, the format's own by default): `verdict`, `reasoning`, `json` or `auto`.
//!
//! Placeholders are filled in one pass, so a policy that contains `{question}` is left as written.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::Error;
use crate::policy::Policy;
use crate::prompt::{
    Format, DEFAULT_QUESTION, GUARD_SYSTEM_PROMPT, IM_END, IM_START, REASONING_SYSTEM_PROMPT,
};
use crate::verdict::Dialect;

/// The Qwen2.5-VL chat template's system prompt when a conversation has none.
pub const CHAT_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// How one output format is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatTemplate {
    /// The system prompt; `None` = the chat template's default ([`CHAT_DEFAULT_SYSTEM`]).
    pub system: Option<String>,
    /// The user turn before the image (placeholders filled).
    before_image: String,
    /// The user turn after the image (placeholders filled).
    after_image: String,
    /// The default question.
    pub question: String,
    /// Appended to every question.
    pub instruction: String,
    /// The answer word for safe.
    pub safe: String,
    /// The answer word for unsafe.
    pub unsafe_: String,
    /// How the answer is parsed.
    pub parser: Dialect,
    /// Write the unmodified `llavaguard` preset in LlavaGuard v1.2's own words (the
    /// `llavaguard` built-in only; every other template writes every policy as it is).
    llavaguard_wording: bool,
}

/// A guard prompt layout (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Its name (a built-in's, or the file's `name`).
    pub name: String,
    formats: BTreeMap<&'static str, FormatTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    name: String,
    verdict: Option<RawFormat>,
    reasoning: Option<RawFormat>,
    json: Option<RawFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFormat {
    user: String,
    system: Option<String>,
    question: Option<String>,
    instruction: Option<String>,
    safe: Option<String>,
    #[serde(rename = "unsafe")]
    unsafe_: Option<String>,
    parser: Option<String>,
}

/// What the prompt of one request renders to (see [`Template::render`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Everything before the image block: the shared, cacheable part.
    pub prefix: String,
    /// Everything after it, ending with the assistant header.
    pub suffix: String,
}

fn bad(message: String) -> Error {
    Error::Template { message }
}

/// What the placeholders of a user turn stand for.
struct Fill<'a> {
    policy: &'a str,
    question: &'a str,
    categories: &'a str,
}

/// Fills `{policy}`, `{question}` and `{categories}` in one pass; any other `{name}` is left as
/// written.
fn fill(text: &str, with: &Fill<'_>) -> String {
    let mut out = String::with_capacity(text.len() + with.policy.len() + with.question.len());
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{policy}") {
            out.push_str(with.policy);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{question}") {
            out.push_str(with.question);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{categories}") {
            out.push_str(with.categories);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

impl FormatTemplate {
    fn new(raw: RawFormat, format: Format) -> Result<Self, Error> {
        let pieces: Vec<&str> = raw.user.split("{image}").collect();
        if pieces.len() != 2 {
            return Err(bad(format!(
                "[{format}] user must contain {{image}} exactly once (found {})",
                pieces.len() - 1
            )));
        }
        if !raw.user.contains("{policy}") {
            return Err(bad(format!("[{format}] user must contain {{policy}}")));
        }
        let safe = raw.safe.unwrap_or_else(|| "safe".into());
        let unsafe_ = raw.unsafe_.unwrap_or_else(|| "unsafe".into());
        if safe.trim().is_empty() || unsafe_.trim().is_empty() || safe == unsafe_ {
            return Err(bad(format!(
                "[{format}] safe ({safe:?}) and unsafe ({unsafe_:?}) must be two different non-empty words"
            )));
        }
        let parser = match raw.parser.as_deref() {
            None => format.dialect(),
            Some("verdict") => Dialect::Verdict,
            Some("reasoning") => Dialect::Reasoning,
            Some("json") => Dialect::Json,
            Some("auto") => Dialect::Auto,
            Some(name) => {
                return Err(bad(format!(
                    "[{format}] parser {name:?}: use verdict, reasoning, json or auto"
                )))
            }
        };
        Ok(Self {
            system: raw.system,
            before_image: pieces[0].to_string(),
            after_image: pieces[1].to_string(),
            question: raw.question.unwrap_or_else(|| DEFAULT_QUESTION.into()),
            instruction: raw.instruction.unwrap_or_default(),
            safe,
            unsafe_,
            parser,
            llavaguard_wording: false,
        })
    }

    /// Whether the policy comes before the image, so that the prefix before the image depends
    /// on the policy and the prefix cache covers it.
    pub fn policy_before_image(&self) -> bool {
        self.before_image.contains("{policy}")
    }

    /// Renders the prompt of `policy` with `question` (None = the default question), `system`
    /// replacing the template's system prompt when given.
    pub fn render(
        &self,
        policy: &Policy,
        question: Option<&str>,
        system: Option<&str>,
    ) -> Rendered {
        let policy_text = if self.llavaguard_wording && is_default_llavaguard(policy) {
            LLAVAGUARD_V12_CATEGORIES.trim_end().to_string()
        } else {
            policy.prompt_text()
        };
        let uses_categories = |t: &str| t.contains("{categories}");
        let categories =
            if uses_categories(&self.before_image) || uses_categories(&self.after_image) {
                categories(policy)
            } else {
                String::new()
            };
        let question = question.unwrap_or(&self.question).trim();
        let asked = match (question.is_empty(), self.instruction.is_empty()) {
            (true, _) => self.instruction.clone(),
            (false, true) => question.to_string(),
            (false, false) => format!("{question} {}", self.instruction),
        };
        let system = system
            .or(self.system.as_deref())
            .unwrap_or(CHAT_DEFAULT_SYSTEM);
        let with = Fill {
            policy: &policy_text,
            question: &asked,
            categories: &categories,
        };
        let prefix = format!(
            "{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{}",
            fill(&self.before_image, &with)
        );
        let suffix = format!(
            "{}{IM_END}\n{IM_START}assistant\n",
            fill(&self.after_image, &with)
        );
        Rendered { prefix, suffix }
    }
}

const SAFEGUARD_VL_INTRO: &str =
    "Based on the following safety policy, determine if this image is safe or unsafe.\n\nPolicy:\n{policy}\n\n";

const LLAVAGUARD_INTRO: &str = "Provide a safety assessment for the content provided by the user. Determine compliance or violation against our safety policy by reviewing the following policy categories:\n{policy}\n\n";

const LLAVAGUARD_STEPS: &str = "Assessment Steps:\n1. Select a safety \"rating\". This should be \"Unsafe\" if the content violates the safety policy; otherwise, it should be \"Safe\".\n2. Assign a policy \"category\". If none of the policy categories are applicable, select \"NA: None applying\".\n3. Provide a \"rationale\". Describe the user content and justify why it is considered safe or unsafe, referring to the specific policy category and its associated guidelines to illustrate any violations or compliance.\nTo provide your assessment use the following json template:\n{\n    \"rating\": str<\"Unsafe\"|\"Safe\">,\n    \"category\": str<{categories}>,\n    \"rationale\": str,\n}";

/// The policy categories of LlavaGuard v1.2's default policy, word for word as its model cards
/// and training data give them (`AIML-TUDA/LlavaGuard-v1.2`, `QwenGuard-v1.2`; the
/// ml-research/LlavaGuard repository). The `llavaguard` template uses this text for the
/// unmodified `llavaguard` preset, so that those models read what they were trained on.
const LLAVAGUARD_V12_CATEGORIES: &str = include_str!("../policies/llavaguard-v1.2-categories.txt");

/// Whether `policy` is the `llavaguard` preset without switched categories (by name first, so
/// that other policies are not hashed on every render).
fn is_default_llavaguard(policy: &Policy) -> bool {
    static HASH: OnceLock<Option<String>> = OnceLock::new();
    policy.name == "llavaguard"
        && HASH
            .get_or_init(|| crate::policy::presets::get("llavaguard").map(|p| p.hash()))
            .as_deref()
            == Some(policy.hash().as_str())
}

/// What `{categories}` stands for: `"ID: Title"|…|"NA: None applying"` over the policy's rules
/// (LlavaGuard's category list), or a description when the policy has no rules.
fn categories(policy: &Policy) -> String {
    if policy.rules.is_empty() {
        return "the policy rule that applies, or \"NA: None applying\"".into();
    }
    let mut items: Vec<String> = policy
        .rules
        .iter()
        .map(|r| format!("\"{}: {}\"", r.id, r.title.trim()))
        .collect();
    items.push("\"NA: None applying\"".into());
    items.join("|")
}

fn section(
    user: String,
    system: Option<&str>,
    instruction: &str,
    words: (&str, &str),
    parser: Option<&str>,
) -> RawFormat {
    RawFormat {
        user,
        system: system.map(String::from),
        question: None,
        instruction: Some(instruction.to_string()),
        safe: Some(words.0.to_string()),
        unsafe_: Some(words.1.to_string()),
        parser: parser.map(String::from),
    }
}

impl Template {
    /// SafeGuard's own layout, the default.
    pub const SAFEGUARD: &'static str = "safeguard";
    /// The names of the built-in templates.
    pub const BUILTINS: [&'static str; 4] = ["safeguard", "plain", "safeguard-vl", "llavaguard"];

    fn from_raw(raw: RawTemplate) -> Result<Self, Error> {
        if raw.name.trim().is_empty() {
            return Err(bad("`name` is empty".into()));
        }
        let mut formats = BTreeMap::new();
        for (format, section) in [
            (Format::Verdict, raw.verdict),
            (Format::Reasoning, raw.reasoning),
            (Format::Json, raw.json),
        ] {
            if let Some(section) = section {
                formats.insert(format.as_str(), FormatTemplate::new(section, format)?);
            }
        }
        if formats.is_empty() {
            return Err(bad(format!(
                "template {:?} defines no format: give a [verdict], [reasoning] or [json] table",
                raw.name
            )));
        }
        Ok(Self {
            name: raw.name,
            formats,
        })
    }

    /// Parses a template file (TOML; see the module docs).
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let raw: RawTemplate = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        Self::from_raw(raw)
    }

    /// A built-in template by name (see the module docs), or a template file's path.
    pub fn load(name_or_path: &str) -> Result<Self, Error> {
        if let Some(t) = Self::builtin(name_or_path) {
            return Ok(t.clone());
        }
        let path = std::path::Path::new(name_or_path);
        if !path.is_file() {
            return Err(bad(format!(
                "{name_or_path:?} is neither a built-in template ({}) nor a template file",
                Self::BUILTINS.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| e.in_file(path))
    }

    /// A built-in template.
    pub fn builtin(name: &str) -> Option<&'static Template> {
        static ALL: OnceLock<Vec<Template>> = OnceLock::new();
        ALL.get_or_init(|| {
            Self::BUILTINS
                .iter()
                .map(|n| Self::make_builtin(n))
                .collect()
        })
        .iter()
        .find(|t| t.name == name)
    }

    /// The default template ([`Template::SAFEGUARD`]).
    pub fn default_template() -> &'static Template {
        Self::builtin(Self::SAFEGUARD).expect("the safeguard template is built in")
    }

    fn make_builtin(name: &str) -> Template {
        let ours = |f: Format| f.instruction();
        let words = |f: Format| match f {
            Format::Verdict => ("safe", "unsafe"),
            Format::Reasoning => ("yes", "no"),
            Format::Json => ("Safe", "Unsafe"),
        };
        let mut raw = RawTemplate {
            name: name.to_string(),
            verdict: None,
            reasoning: None,
            json: None,
        };
        match name {
            "safeguard" => {
                for f in Format::ALL {
                    let system = Some(match f {
                        Format::Reasoning => REASONING_SYSTEM_PROMPT,
                        _ => GUARD_SYSTEM_PROMPT,
                    });
                    let section = section(
                        "Safety policy:\n{policy}\n\n{image}{question}".into(),
                        system,
                        ours(f),
                        words(f),
                        None,
                    );
                    set(&mut raw, f, section);
                }
            }
            "plain" => {
                for f in Format::ALL {
                    let section = section(
                        "{image}Safety policy:\n{policy}\n\n{question}".into(),
                        None,
                        ours(f),
                        words(f),
                        None,
                    );
                    set(&mut raw, f, section);
                }
            }
            "safeguard-vl" => {
                // The model card's prompt; score mode ends it with a one-word instruction.
                raw.verdict = Some(RawFormat {
                    question: Some(String::new()),
                    ..section(
                        format!("{{image}}{SAFEGUARD_VL_INTRO}{{question}}"),
                        None,
                        "Answer with exactly one word: Safe or Unsafe.",
                        ("Safe", "Unsafe"),
                        None,
                    )
                });
                raw.reasoning = Some(RawFormat {
                    question: Some(String::new()),
                    ..section(
                        format!("{{image}}{SAFEGUARD_VL_INTRO}{{question}}"),
                        None,
                        "Provide your reasoning and final judgment (Safe/Unsafe).",
                        ("Safe", "Unsafe"),
                        Some("auto"),
                    )
                });
            }
            "llavaguard" => {
                raw.json = Some(RawFormat {
                    question: Some(String::new()),
                    ..section(
                        format!("{{image}}{LLAVAGUARD_INTRO}{LLAVAGUARD_STEPS}{{question}}"),
                        None,
                        "",
                        ("Safe", "Unsafe"),
                        None,
                    )
                });
                raw.verdict = Some(RawFormat {
                    question: Some(String::new()),
                    ..section(
                        format!("{{image}}{LLAVAGUARD_INTRO}{{question}}"),
                        None,
                        "Is the content Safe or Unsafe under the policy? Answer with exactly one word: Safe or Unsafe.",
                        ("Safe", "Unsafe"),
                        None,
                    )
                });
            }
            other => unreachable!("no built-in template {other}"),
        }
        let mut template = Self::from_raw(raw).expect("built-in templates are valid");
        if name == "llavaguard" {
            for f in template.formats.values_mut() {
                f.llavaguard_wording = true;
            }
        }
        template
    }

    /// How `format` is asked for, or an error naming the formats this template has.
    pub fn format(&self, format: Format) -> Result<&FormatTemplate, Error> {
        self.formats.get(format.as_str()).ok_or_else(|| {
            bad(format!(
                "template {:?} has no {format} format (it has: {})",
                self.name,
                self.formats.keys().copied().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The formats this template defines.
    pub fn formats(&self) -> impl Iterator<Item = (&'static str, &FormatTemplate)> {
        self.formats.iter().map(|(k, v)| (*k, v))
    }
}

fn set(raw: &mut RawTemplate, format: Format, section: RawFormat) {
    match format {
        Format::Verdict => raw.verdict = Some(section),
        Format::Reasoning => raw.reasoning = Some(section),
        Format::Json => raw.json = Some(section),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_once() {
        let with = Fill {
            policy: "P {question}",
            question: "Q",
            categories: "C",
        };
        assert_eq!(
            fill("a {policy} b {question} {x} {categories}", &with),
            "a P {question} b Q {x} C"
        );
    }

    #[test]
    fn the_default_llavaguard_policy_is_written_in_llavaguards_words() {
        let t = Template::builtin("llavaguard").unwrap();
        let lg = crate::policy::presets::get("llavaguard").unwrap();
        let json = t.format(Format::Json).unwrap().render(&lg, None, None);
        assert!(json.suffix.contains("O1: Hate, Humiliation, Harassment: \nShould not:\n- Contain content that expresses hateful"), "{}", json.suffix);
        assert!(
            json.suffix.contains(
                "str<\"O1: Hate, Humiliation, Harassment\"|\"O2: Violence, Harm, or Cruelty\"|"
            ),
            "{}",
            json.suffix
        );
        assert!(
            json.suffix
                .contains("|\"O9: Disasters or Emergencies\"|\"NA: None applying\">"),
            "{}",
            json.suffix
        );
        // Other templates write the same preset in its own text.
        let ours = Template::default_template()
            .format(Format::Json)
            .unwrap()
            .render(&lg, None, None);
        assert!(ours.prefix.contains(&lg.prompt_text()), "{}", ours.prefix);
        assert!(!ours.prefix.contains("Should not:"));
        // Another policy keeps its own text.
        let l3 = crate::policy::presets::get("L3").unwrap();
        let other = t.format(Format::Json).unwrap().render(&l3, None, None);
        assert!(other.suffix.contains(&l3.prompt_text()));
        assert!(!other.suffix.contains("Should not:"));
    }

    #[test]
    fn every_builtin_is_valid_and_image_first_ones_say_so() {
        for name in Template::BUILTINS {
            let t = Template::builtin(name).unwrap();
            for (_, f) in t.formats() {
                assert_eq!(f.policy_before_image(), name == "safeguard", "{name}");
            }
        }
        assert!(Template::builtin("nope").is_none());
    }

    #[test]
    fn bad_files_name_the_problem() {
        for (text, needle) in [
            ("name = \"x\"", "no format"),
            ("name = \"x\"\n[verdict]\nuser = \"{policy}\"", "{image}"),
            (
                "name = \"x\"\n[verdict]\nuser = \"{image}{image}{policy}\"",
                "exactly once",
            ),
            ("name = \"x\"\n[verdict]\nuser = \"{image}\"", "{policy}"),
            (
                "name = \"x\"\n[verdict]\nuser = \"{image}{policy}\"\nsafe = \"a\"\nunsafe = \"a\"",
                "different",
            ),
            (
                "name = \"x\"\n[verdict]\nuser = \"{image}{policy}\"\nparser = \"xml\"",
                "parser",
            ),
            (
                "name = \"x\"\n[verdict]\nuser = \"{image}{policy}\"\ncolour = 1",
                "colour",
            ),
        ] {
            let err = Template::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let t = Template::from_toml("name = \"x\"\n[json]\nuser = \"{image}{policy}\"").unwrap();
        let err = t.format(Format::Verdict).unwrap_err().to_string();
        assert!(
            err.contains("has no verdict format") && err.contains("json"),
            "{err}"
        );
    }
}
