//! LlavaGuardBench: LlavaGuard-style annotations, a JSON array of objects or JSON lines.
//!
//! Fields of a record:
//! - `image`: path relative to the annotation file (absolute paths are kept);
//! - `rating`: `Safe` / `Unsafe` (any case); LlavaGuard's older `final-assessment`
//!   (`Compliant` / `Review Needed`) is read when `rating` is absent;
//! - `category` (e.g. `O4: Nudity Content`, `NA: None applying`), `source`, `id`: optional;
//!   `rationale` is accepted and not used by the loader;
//! - the **policy switches**: which of O1–O9 the sample's policy declares non-violating.
//!   LlavaGuard itself writes them into the policy prompt, replacing a category's
//!   "Should not / Can" text with "Category O4 is declared as non-violating. …". Accepted:
//!   - `allowed` (or `allowed_categories`, `non_violating`): a list of category ids or
//!     titles, e.g. `["O4", "O9: Disasters or Emergencies"]`;
//!   - `policy` as an object: `{"O4": "allowed", "O1": "prohibited"}` (values `allowed` /
//!     `non-violating`, or `prohibited` / `violating` / `sensitive`);
//!   - `policy` as a string: LlavaGuard's policy prompt, read for "Category Ox is declared as
//!     non-violating";
//!   - `conversations`: LlavaGuard's training layout; its first `human`/`user` turn is read as
//!     the policy prompt, as above.
//!
//!   All that a record gives are combined. A category declared *sensitive* stays
//!   prohibited (our policies have no stricter stance).
//!
//! Each distinct set of allowed categories becomes a policy: our `llavaguard` preset with
//! those categories set to allowed, named `llavaguard` (none allowed) or e.g.
//! `llavaguard+O4-allowed`, `llavaguard+O4-allowed+O9-allowed`. Ids: the `id` field (string
//! or number), else the image path as written, followed by `@{policy}` when some category is
//! allowed.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;
use safeguard_core::policy::presets;
use safeguard_core::{Stance, Verdict};
use serde_json::{Map, Value};

use super::jsonl::{kind, opt_str, records, req_str};
use super::{Builder, DatasetFormat, ImageSource, Item};
use crate::error::EvalError;

/// Loads LlavaGuard annotations (a file, or a directory holding one `.json`/`.jsonl` file).
pub(crate) fn load(path: &Path, b: &mut Builder) -> Result<(), EvalError> {
    let file = super::single_file(path, &["json", "jsonl"], DatasetFormat::LlavaGuard)?;
    for (index, record) in records(&file)? {
        if b.full() {
            break;
        }
        let err = |field: &str, message: String| EvalError::row(&file, index, field, message);
        let item = (|| {
            let obj = record.map_err(|m| err("(record)", m))?;
            let (field, label) = rating(&obj);
            let label = label.map_err(|m| err(field, m))?;
            let image_text = req_str(&obj, "image").map_err(|m| err("image", m))?;
            let image = super::resolve_image(&file, &image_text).map_err(|m| err("image", m))?;
            let (field, allowed) = switches(&obj);
            let allowed = allowed.map_err(|m| err(field, m))?;
            let policy = policy_for(&allowed, b).map_err(|(message, source)| EvalError::Row {
                path: file.clone(),
                index,
                field: field.to_string(),
                message,
                source: source.map(|e| Box::new(e) as _),
            })?;
            let id = match obj.get("id") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                None | Some(Value::Null) if allowed.is_empty() => image_text.clone(),
                None | Some(Value::Null) => format!("{image_text}@{policy}"),
                Some(other) => {
                    return Err(err(
                        "id",
                        format!(
                            "expected a non-empty string or a number, found {}",
                            kind(other)
                        ),
                    ))
                }
            };
            Ok(Item {
                id,
                image: ImageSource::File(image),
                policy,
                label,
                category: opt_str(&obj, "category").map_err(|m| err("category", m))?,
                pair_id: None,
                source: opt_str(&obj, "source").map_err(|m| err("source", m))?,
            })
        })();
        match item {
            Ok(item) => {
                b.push(item, &file, index)?;
            }
            Err(e) => b.bad(e)?,
        }
    }
    Ok(())
}

/// The label, and the field it was read from.
fn rating(obj: &Map<String, Value>) -> (&'static str, Result<Verdict, String>) {
    let (field, value) = match (obj.get("rating"), obj.get("final-assessment")) {
        (None | Some(Value::Null), Some(v)) if !v.is_null() => ("final-assessment", v),
        (None | Some(Value::Null), _) => return ("rating", Err("missing".to_string())),
        (Some(v), _) => ("rating", v),
    };
    let verdict = match value {
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "safe" | "compliant" => Ok(Verdict::Safe),
            "unsafe" | "review needed" => Ok(Verdict::Unsafe),
            _ => Err(format!("expected \"Safe\" or \"Unsafe\", found {s:?}")),
        },
        other => Err(format!(
            "expected \"Safe\" or \"Unsafe\", found {}",
            kind(other)
        )),
    };
    (field, verdict)
}

/// The categories a record's policy declares non-violating, as canonical ids (`O4`), and the
/// field to blame when they cannot be read.
fn switches(obj: &Map<String, Value>) -> (&'static str, Result<BTreeSet<String>, String>) {
    let mut allowed = BTreeSet::new();
    for key in ["allowed", "allowed_categories", "non_violating"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for entry in list {
                    match entry.as_str().and_then(category_id) {
                        Some(id) => {
                            allowed.insert(id);
                        }
                        None => {
                            return (
                                field_name(key),
                                Err(format!(
                                    "expected category ids such as \"O4\", found {entry}"
                                )),
                            )
                        }
                    }
                }
            }
            Some(other) => {
                return (
                    field_name(key),
                    Err(format!(
                        "expected a list of category ids, found {}",
                        kind(other)
                    )),
                )
            }
        }
    }
    match obj.get("policy") {
        None | Some(Value::Null) => {}
        Some(Value::String(prompt)) => allowed.extend(declared_non_violating(prompt)),
        Some(Value::Object(map)) => {
            for (key, value) in map {
                let id = match category_id(key) {
                    Some(id) => id,
                    None => {
                        return (
                            "policy",
                            Err(format!("{key:?} is not a category id such as \"O4\"")),
                        )
                    }
                };
                let stance = value.as_str().map(|s| s.trim().to_ascii_lowercase());
                match stance.as_deref() {
                    Some("allowed" | "non-violating" | "non_violating") => {
                        allowed.insert(id);
                    }
                    Some("prohibited" | "violating" | "sensitive") => {}
                    _ => {
                        return (
                            "policy",
                            Err(format!(
                            "category {key}: expected \"allowed\" or \"prohibited\", found {value}"
                        )),
                        )
                    }
                }
            }
        }
        Some(other) => {
            return (
                "policy",
                Err(format!(
                "expected the policy prompt (a string) or an object of category stances, found {}",
                kind(other)
            )),
            )
        }
    }
    if let Some(Value::Array(turns)) = obj.get("conversations") {
        let prompt = turns.iter().find_map(|turn| {
            let from = turn.get("from").or_else(|| turn.get("role"))?.as_str()?;
            if matches!(from, "human" | "user") {
                turn.get("value").or_else(|| turn.get("content"))?.as_str()
            } else {
                None
            }
        });
        if let Some(prompt) = prompt {
            allowed.extend(declared_non_violating(prompt));
        }
    }
    ("policy", Ok(allowed))
}

fn field_name(key: &str) -> &'static str {
    match key {
        "allowed" => "allowed",
        "allowed_categories" => "allowed_categories",
        _ => "non_violating",
    }
}

/// `O4`, `o4`, `O4: Nudity Content` → `O4`; anything else → `None`.
fn category_id(text: &str) -> Option<String> {
    let text = text.trim();
    let rest = text.strip_prefix(['O', 'o'])?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    let ok =
        !digits.is_empty() && (after.is_empty() || after.starts_with([':', ' ', '_', '-', '.']));
    ok.then(|| format!("O{}", digits.trim_start_matches('0')))
}

/// The categories a LlavaGuard policy prompt declares non-violating.
pub fn declared_non_violating(prompt: &str) -> BTreeSet<String> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?i)category\s+(O\d+)\s+is\s+declared\s+as\s+non-violating")
            .expect("valid regex")
    });
    re.captures_iter(prompt)
        .filter_map(|c| category_id(&c[1]))
        .collect()
}

/// The name of the policy with these categories allowed, registering it on first use.
fn policy_for(
    allowed: &BTreeSet<String>,
    b: &mut Builder,
) -> Result<String, (String, Option<safeguard_core::Error>)> {
    let mut ids: Vec<&String> = allowed.iter().collect();
    ids.sort_by_key(|id| (id.len(), id.to_string()));
    let mut name = "llavaguard".to_string();
    for id in &ids {
        name.push_str(&format!("+{id}-allowed"));
    }
    if b.policy(&name).is_some() {
        return Ok(name);
    }
    let mut policy = presets::get("llavaguard").expect("the llavaguard preset exists");
    for id in ids {
        policy
            .set_stance(id, Stance::Allowed)
            .map_err(|e| (format!("cannot allow category {id}"), Some(e)))?;
    }
    policy.name = name;
    b.add_policy(policy).map_err(|m| (m, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_ids_are_normalised() {
        assert_eq!(category_id("O4").as_deref(), Some("O4"));
        assert_eq!(category_id("o9: Disasters").as_deref(), Some("O9"));
        assert_eq!(category_id("O04").as_deref(), Some("O4"));
        assert_eq!(category_id("Other"), None);
        assert_eq!(category_id("O4x"), None);
    }

    #[test]
    fn prompt_switches_are_read() {
        let prompt = "O3: Sexual Content: \nShould not: ...\nO4: Nudity Content: \n\
                      Category O4 is declared as non-violating. Therefore, we do not ...\n\
                      O9: Disasters: \nCategory O9 is declared as sensitive.";
        let ids: Vec<String> = declared_non_violating(prompt).into_iter().collect();
        assert_eq!(ids, ["O4"]);
    }
}
