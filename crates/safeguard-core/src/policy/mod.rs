//! Safety policies: natural-language text plus optional structure.
//!
//! A [`Policy`] is what the guard is asked to enforce. It always has text the model reads
//! ([`Policy::prompt_text`]); it may also name [`Rule`]s, each either prohibited or explicitly
//! allowed, and free-text exceptions. Structure lets a guard report *which* rules an image
//! breaks and lets a user switch a category on or off ([`Policy::set_stance`]) without
//! rewriting prose.
//!
//! Policies come from three places, resolved by [`Policy::resolve`]:
//! - a built-in preset ([`presets`]): `L1`…`L5`, `llavaguard`, `openai`, `unsafebench`;
//! - a file: Markdown (`.md`, see [`markdown`]) or TOML (`.toml`), or plain text (`.txt`);
//! - raw text given on the command line or in a request.

pub mod markdown;
pub mod presets;
mod toml_format;

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Largest policy text accepted, in bytes of UTF-8. Long policies are most of a prompt; a
/// policy beyond this is almost certainly a mistake or an abuse.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// Most rules one policy may declare.
pub const MAX_RULES: usize = 256;

/// Whether a policy forbids or explicitly permits what a rule describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stance {
    /// Images showing this are *unsafe* under the policy.
    Prohibited,
    /// Images showing this are *safe* under the policy, even if other policies forbid it.
    Allowed,
}

impl fmt::Display for Stance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stance::Prohibited => "prohibited",
            Stance::Allowed => "allowed",
        })
    }
}

/// One named rule (category) of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Short stable identifier, e.g. `O3` or `sexual/minors`: ASCII letters, digits and
    /// `_ - . /`, at most 64 characters. Unique within a policy (case-insensitively).
    pub id: String,
    /// Human-readable name, e.g. "Sexual Content".
    pub title: String,
    /// Whether the policy forbids or permits this content.
    pub stance: Stance,
    /// What the rule covers, in plain language. May be empty.
    #[serde(default)]
    pub description: String,
}

/// A safety policy. Build one with [`Policy::from_text`], [`Policy::from_markdown`],
/// [`Policy::from_toml`], [`Policy::from_file`], [`presets::get`] or [`Policy::resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Short name: a preset name, a file stem, or `custom` for raw text.
    pub name: String,
    /// Optional heading shown above the policy text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Free text: the whole policy for a raw-text policy, the preamble for a structured one.
    #[serde(default)]
    pub description: String,
    /// Named rules, in the order they were written.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Free-text exceptions that apply across rules.
    #[serde(default)]
    pub exceptions: Vec<String>,
}

impl Policy {
    /// A policy made of raw natural-language text, with no structure.
    pub fn from_text(name: &str, text: &str) -> Result<Self, Error> {
        let policy = Policy {
            name: name.to_string(),
            title: None,
            description: text.trim().to_string(),
            rules: Vec::new(),
            exceptions: Vec::new(),
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Parses the Markdown policy format described in [`markdown`].
    pub fn from_markdown(name: &str, text: &str) -> Result<Self, Error> {
        check_size(text)?;
        let policy = markdown::parse(name, text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Parses the TOML policy format: top-level `name`, `title`, `description`, `exceptions`
    /// and an array of `[[rules]]` tables with `id`, `title`, `stance`, `description`.
    pub fn from_toml(name: &str, text: &str) -> Result<Self, Error> {
        check_size(text)?;
        let policy = toml_format::parse(name, text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a policy file; the extension picks the format (`.md`/`.markdown`, `.toml`,
    /// `.txt`). The policy is named after the file stem unless the file names it.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.len() > MAX_POLICY_BYTES as u64 {
            return Err(Error::TooLarge {
                bytes: meta.len() as usize,
                max: MAX_POLICY_BYTES,
            });
        }
        let bytes = std::fs::read(path).map_err(io_err)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("custom");
        let ext = path
            .extension()
            .and_then(|s| s.to_str())
            .map(str::to_ascii_lowercase);
        let parsed = match ext.as_deref() {
            Some("md" | "markdown") => Policy::from_markdown(stem, &text),
            Some("toml") => Policy::from_toml(stem, &text),
            Some("txt") => Policy::from_text(stem, &text),
            other => {
                return Err(Error::UnknownExtension {
                    path: path.to_path_buf(),
                    extension: other.unwrap_or("").to_string(),
                })
            }
        };
        parsed.map_err(|e| e.in_file(path))
    }

    /// Resolves what a user typed after `--policy`:
    /// 1. a preset name (case-insensitive), e.g. `L3` or `openai`;
    /// 2. the path of an existing file, or anything ending in `.md`, `.markdown`, `.toml`
    ///    or `.txt` (a missing file is an error, not text);
    /// 3. otherwise raw policy text, which must contain at least one space so that a
    ///    mistyped preset name (`L6`) is reported instead of used as a policy.
    pub fn resolve(spec: &str) -> Result<Self, Error> {
        if let Some(policy) = presets::get(spec) {
            return Ok(policy);
        }
        let path = Path::new(spec);
        let looks_like_file = [".md", ".markdown", ".toml", ".txt"]
            .iter()
            .any(|ext| spec.to_ascii_lowercase().ends_with(ext));
        if !spec.contains('\n') && (looks_like_file || path.is_file()) {
            return Policy::from_file(path);
        }
        if !spec.trim().contains(char::is_whitespace) {
            return Err(Error::UnknownPreset {
                name: spec.to_string(),
                known: presets::names().join(", "),
            });
        }
        Policy::from_text("custom", spec)
    }

    /// Checks the invariants every constructor guarantees: non-empty text, size limit, rule
    /// ids well-formed and unique, rule titles non-empty.
    pub fn validate(&self) -> Result<(), Error> {
        if self.description.trim().is_empty() && self.rules.is_empty() {
            return Err(Error::Empty);
        }
        check_size(&self.prompt_text())?;
        if self.rules.len() > MAX_RULES {
            return Err(Error::TooManyRules {
                count: self.rules.len(),
                max: MAX_RULES,
            });
        }
        let mut seen = std::collections::HashSet::new();
        for rule in &self.rules {
            validate_rule_id(&rule.id)?;
            if rule.title.trim().is_empty() {
                return Err(Error::EmptyRuleTitle {
                    id: rule.id.clone(),
                });
            }
            if !seen.insert(rule.id.to_ascii_lowercase()) {
                return Err(Error::DuplicateRule {
                    id: rule.id.clone(),
                });
            }
        }
        Ok(())
    }

    /// The rule with this id (case-insensitive).
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id.eq_ignore_ascii_case(id))
    }

    /// Rules the policy prohibits, in order.
    pub fn prohibited(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.stance == Stance::Prohibited)
    }

    /// Rules the policy explicitly allows, in order.
    pub fn allowed(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.stance == Stance::Allowed)
    }

    /// Switches one rule between prohibited and allowed, e.g. allowing `O4` (nudity) in the
    /// `llavaguard` preset. Errors name the unknown id and list the known ones.
    pub fn set_stance(&mut self, id: &str, stance: Stance) -> Result<(), Error> {
        let known = self.rule_ids();
        match self
            .rules
            .iter_mut()
            .find(|r| r.id.eq_ignore_ascii_case(id))
        {
            Some(rule) => {
                rule.stance = stance;
                Ok(())
            }
            None => Err(Error::UnknownRule {
                id: id.to_string(),
                policy: self.name.clone(),
                known,
            }),
        }
    }

    fn rule_ids(&self) -> String {
        let ids: Vec<&str> = self.rules.iter().map(|r| r.id.as_str()).collect();
        if ids.is_empty() {
            "(this policy has no named rules)".to_string()
        } else {
            ids.join(", ")
        }
    }

    /// The text the model reads. Deterministic: the same policy always renders to the same
    /// bytes, whichever format it was written in, so prompts under one policy share a token
    /// prefix.
    pub fn prompt_text(&self) -> String {
        let mut out = String::new();
        if let Some(title) = &self.title {
            out.push_str(title.trim());
            out.push_str("\n\n");
        }
        if !self.description.trim().is_empty() {
            out.push_str(&reflow(&self.description));
            out.push_str("\n\n");
        }
        push_rules(
            &mut out,
            "Prohibited content (unsafe under this policy):",
            self.prohibited(),
        );
        push_rules(
            &mut out,
            "Explicitly allowed content (safe under this policy):",
            self.allowed(),
        );
        if !self.exceptions.is_empty() {
            out.push_str("Exceptions:\n");
            for exception in &self.exceptions {
                out.push_str("- ");
                out.push_str(exception.trim());
                out.push('\n');
            }
            out.push('\n');
        }
        out.trim_end().to_string()
    }

    /// Hex SHA-256 of [`Policy::prompt_text`]: identifies the exact policy a verdict was
    /// given under (in run records, server responses and cache keys).
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.prompt_text().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn push_rules<'a>(out: &mut String, heading: &str, rules: impl Iterator<Item = &'a Rule>) {
    let mut rules = rules.peekable();
    if rules.peek().is_none() {
        return;
    }
    out.push_str(heading);
    out.push('\n');
    for rule in rules {
        out.push_str(&format!("- [{}] {}", rule.id, rule.title.trim()));
        let description = rule.description.trim();
        if !description.is_empty() {
            out.push_str(": ");
            out.push_str(&description.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        out.push('\n');
    }
    out.push('\n');
}

/// Joins hard-wrapped lines into one line per paragraph; list items, headings and blank
/// lines keep their own lines.
fn reflow(text: &str) -> String {
    let mut out = String::new();
    let mut in_paragraph = false;
    for line in text.trim().lines().map(str::trim) {
        let starts_block = line.is_empty()
            || line.starts_with(['-', '*', '#', '>', '|'])
            || line
                .split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        if in_paragraph && !starts_block {
            out.push(' ');
        } else if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(line);
        in_paragraph = !line.is_empty() && !line.starts_with('#');
    }
    out
}

fn check_size(text: &str) -> Result<(), Error> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(Error::TooLarge {
            bytes: text.len(),
            max: MAX_POLICY_BYTES,
        });
    }
    Ok(())
}

/// Checks a rule id: 1–64 characters from ASCII letters, digits and `_ - . /`.
pub fn validate_rule_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRuleId { id: id.to_string() })
    }
}

/// Turns a title into a rule id: lowercase ASCII words joined by `-`.
pub fn slugify(title: &str) -> String {
    let mut slug = String::new();
    for word in title
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    slug.truncate(64);
    slug.trim_end_matches('-').to_string()
}
