//! The Markdown policy format.
//!
//! ```markdown
//! # Family-friendly forum            <- optional title (first `#` heading)
//!
//! Free text: who the platform is for, how to judge borderline cases.
//!
//! ## Prohibited                      <- also: "Not allowed", "Disallowed", "Unsafe"
//! ### weapons: Weapons               <- a rule: `### id: Title`, or `### Title` (id = slug)
//! Firearms or knives aimed at a person.
//! - **Gore**: visible wounds, blood  <- a rule as a bullet: `- **Title**: description`
//!
//! ## Allowed                         <- also: "Permitted", "Safe"
//! ### art-nudity: Classical art
//! Nudity in paintings and sculpture.
//!
//! ## Exceptions                      <- each bullet is one exception
//! - News reporting may show the aftermath of violence without gore.
//! ```
//!
//! Any other `##` section is part of the free text. Text under a Prohibited/Allowed section
//! must belong to a rule; lines that do not are reported with their line number.

use super::{slugify, Policy, Rule, Stance};
use crate::error::Error;

#[derive(Clone, Copy, PartialEq)]
enum Section {
    Free,
    Rules(Stance),
    Exceptions,
}

fn section_for(heading: &str) -> Section {
    let h = heading
        .trim()
        .trim_end_matches(':')
        .trim()
        .to_ascii_lowercase();
    match h.as_str() {
        "prohibited" | "not allowed" | "disallowed" | "forbidden" | "unsafe"
        | "prohibited content" => Section::Rules(Stance::Prohibited),
        "allowed" | "permitted" | "safe" | "allowed content" => Section::Rules(Stance::Allowed),
        "exceptions" | "exception" => Section::Exceptions,
        _ => Section::Free,
    }
}

struct Parser {
    policy: Policy,
    section: Section,
    /// Whether the current rule came from a bullet (so that only indented lines continue it).
    in_bullet: bool,
}

/// Parses a Markdown policy; see the module docs for the format.
pub fn parse(name: &str, text: &str) -> Result<Policy, Error> {
    let mut p = Parser {
        policy: Policy {
            name: name.to_string(),
            title: None,
            description: String::new(),
            rules: Vec::new(),
            exceptions: Vec::new(),
        },
        section: Section::Free,
        in_bullet: false,
    };
    for (index, line) in text.lines().enumerate() {
        p.line(index + 1, line)?;
    }
    let policy = &mut p.policy;
    policy.description = policy.description.trim().to_string();
    for rule in &mut policy.rules {
        rule.description = rule.description.trim().to_string();
    }
    Ok(p.policy)
}

impl Parser {
    fn line(&mut self, number: usize, line: &str) -> Result<(), Error> {
        let trimmed = line.trim();
        if let Some(title) = trimmed.strip_prefix("# ") {
            if self.policy.title.is_none() && self.policy.description.trim().is_empty() {
                self.policy.title = Some(title.trim().to_string());
                return Ok(());
            }
        }
        if let Some(heading) = trimmed.strip_prefix("## ") {
            self.section = section_for(heading);
            self.in_bullet = false;
            if self.section == Section::Free {
                self.push_free(line);
            }
            return Ok(());
        }
        match self.section {
            Section::Free => {
                self.push_free(line);
                Ok(())
            }
            Section::Exceptions => self.exception_line(number, line),
            Section::Rules(stance) => self.rule_line(number, line, stance),
        }
    }

    fn push_free(&mut self, line: &str) {
        self.policy.description.push_str(line);
        self.policy.description.push('\n');
    }

    fn exception_line(&mut self, number: usize, line: &str) -> Result<(), Error> {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Ok(());
        }
        if let Some(item) = bullet(trimmed) {
            self.policy.exceptions.push(item.to_string());
            return Ok(());
        }
        match self.policy.exceptions.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(trimmed);
                Ok(())
            }
            _ => Err(Error::Markdown {
                line: number,
                message: "under '## Exceptions' each exception must be a bullet ('- ...')"
                    .to_string(),
            }),
        }
    }

    fn rule_line(&mut self, number: usize, line: &str, stance: Stance) -> Result<(), Error> {
        let trimmed = line.trim();
        if let Some(heading) = trimmed.strip_prefix("### ") {
            let (id, title) = split_id_title(heading);
            self.push_rule(number, id, title, String::new(), stance)?;
            self.in_bullet = false;
            return Ok(());
        }
        if trimmed.is_empty() {
            return Ok(());
        }
        let indented = line.starts_with([' ', '\t']);
        if !indented {
            if let Some((title, description)) = bullet(trimmed).and_then(bold_title) {
                let (id, title) = split_id_title(title);
                self.push_rule(number, id, title, description.to_string(), stance)?;
                self.in_bullet = true;
                return Ok(());
            }
        }
        // A `###` rule takes every following line; a bullet rule only indented ones.
        let in_bullet = self.in_bullet;
        match self.policy.rules.last_mut() {
            Some(rule) if !in_bullet || indented => {
                rule.description.push_str(trimmed);
                rule.description.push('\n');
                Ok(())
            }
            _ => Err(Error::Markdown {
                line: number,
                message: "text under a Prohibited/Allowed section must belong to a rule: \
                          start one with '### id: Title' or '- **Title**: description'"
                    .to_string(),
            }),
        }
    }

    fn push_rule(
        &mut self,
        number: usize,
        id: Option<&str>,
        title: &str,
        description: String,
        stance: Stance,
    ) -> Result<(), Error> {
        let title = title.trim();
        if title.is_empty() {
            return Err(Error::Markdown {
                line: number,
                message: "rule has no title".to_string(),
            });
        }
        let id = match id {
            Some(id) => id.trim().to_string(),
            None => slugify(title),
        };
        super::validate_rule_id(&id).map_err(|e| Error::Markdown {
            line: number,
            message: e.to_string(),
        })?;
        self.policy.rules.push(Rule {
            id,
            title: title.to_string(),
            stance,
            description: description + "\n",
        });
        Ok(())
    }
}

fn bullet(line: &str) -> Option<&str> {
    line.strip_prefix("- ")
        .or_else(|| line.strip_prefix("* "))
        .map(str::trim)
}

/// `**Title**: rest` or `**Title:** rest` → (Title, rest).
fn bold_title(item: &str) -> Option<(&str, &str)> {
    let rest = item.strip_prefix("**")?;
    let end = rest.find("**")?;
    let title = rest[..end].trim().trim_end_matches(':').trim();
    let after = rest[end + 2..].trim_start();
    let after = after
        .strip_prefix(':')
        .or_else(|| after.strip_prefix('—'))
        .or_else(|| after.strip_prefix("- "))
        .unwrap_or(after);
    Some((title, after.trim()))
}

/// `id: Title` → (Some(id), Title) when the part before the colon is a valid id without
/// spaces; otherwise the whole heading is the title.
fn split_id_title(heading: &str) -> (Option<&str>, &str) {
    if let Some((id, title)) = heading.split_once(':') {
        let id = id.trim();
        if !id.is_empty() && !id.contains(' ') && super::validate_rule_id(id).is_ok() {
            return (Some(id), title.trim());
        }
    }
    (None, heading.trim())
}
