//! The policy switches of a LlavaGuard record: which categories its policy declares
//! non-violating, and the named policy (our `llavaguard` preset with those allowed) that
//! results.

use std::collections::BTreeSet;

use regex::Regex;
use safeguard_core::policy::presets;
use safeguard_core::Stance;
use serde_json::{Map, Value};

use super::super::jsonl::kind;
use super::super::Builder;

/// The categories a record's policy declares non-violating, as canonical ids (`O4`), and the
/// field to blame when they cannot be read.
pub(super) fn switches(
    obj: &Map<String, Value>,
) -> (&'static str, Result<BTreeSet<String>, String>) {
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
    if let Some(prompt) = super::turn(obj, &["human", "user"]).and_then(Value::as_str) {
        allowed.extend(declared_non_violating(prompt));
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
pub(super) fn policy_for(
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
