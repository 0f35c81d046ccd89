//! LlavaGuardBench: LlavaGuard annotations, as LlavaGuard's own builder writes them
//! (ml-research/LlavaGuard `llavaguard/data/build_dataset.py`), a JSON array of objects or
//! JSON lines; and the hub's CSV layout (`csv.rs`).
//!
//! **The builder's layout.** A directory `LlavaGuard-DS/vN/` with `train.json`, `eval.json`,
//! `test.json`, `all_data.json`, `train_oversampled.json` (the minority rating repeated: its
//! ids repeat on purpose) and `train_default_policy.json`, read one at a time
//! ([`super::LoadOptions::split`]: `test` by default in `safeguard eval`). Records are
//! `{id, image, final-assessment, score, category, conversations}`:
//! - `conversations`: `[{"from": "human", "value": POLICY PROMPT}, {"from": "gpt", "value":
//!   ASSESSMENT JSON}]`. **The label is the rating inside the `gpt` turn's JSON** (`rating`:
//!   `Safe`/`Unsafe`; older templates: `decision`, `final-assessment` or `assessment`:
//!   `Compliant`/`Review Needed`). The policy is read from the human turn (below).
//! - `final-assessment` (`Compliant`/`Review Needed`) and `score` (`Highly Inappropriate` …)
//!   are the *image's* human rating under the default policy. They disagree with the label on
//!   the policy-exception copies (`*_v2`: the image's own category declared non-violating,
//!   rating Safe), so `final-assessment` is read only for a record without an assessment and
//!   without policy switches (an error otherwise, as it would invert exactly those samples).
//! - `image`: an absolute path of the authors' machine. A path that does not exist is
//!   re-rooted with `--image-root DIR` ([`super::LoadOptions::image_root`]) on its longest
//!   suffix found under DIR (as LlavaGuard's `fix_broken_image_paths` does on `data/`).
//!   Relative paths are relative to the annotation file.
//!
//! Our own simpler records are read too: a top-level `rating` (`Safe`/`Unsafe`, any case),
//! `category` (e.g. `O4: Nudity Content`, `NA: None applying`), `source`, `id`; `rationale`
//! is accepted and not used. When both a top-level `rating` and the `gpt` turn give a
//! label, they must agree.
//!
//! The **policy switches** ([`switches`]): which of O1–O9 the sample's policy declares
//! non-violating. LlavaGuard writes them into the policy prompt, replacing a category's
//! "Should not / Can" text with "Category O4 is declared as non-violating. …". Accepted:
//! - `allowed` (or `allowed_categories`, `non_violating`): a list of category ids or
//!   titles, e.g. `["O4", "O9: Disasters or Emergencies"]`;
//! - `policy` as an object: `{"O4": "allowed", "O1": "prohibited"}` (values `allowed` /
//!   `non-violating`, or `prohibited` / `violating` / `sensitive`);
//! - `policy` as a string: LlavaGuard's policy prompt, read for "Category Ox is declared as
//!   non-violating";
//! - `conversations`: its first `human`/`user` turn is read as the policy prompt, as above.
//!
//! All that a record gives are combined. A category declared *sensitive* stays
//! prohibited (our policies have no stricter stance).
//!
//! Each distinct set of allowed categories becomes a policy: our `llavaguard` preset with
//! those categories set to allowed, named `llavaguard` (none allowed) or e.g.
//! `llavaguard+O4-allowed`, `llavaguard+O4-allowed+O9-allowed`. Ids: the `id` field (string
//! or number), else the image path as written, followed by `@{policy}` when some category is
//! allowed. A record repeated whole under its id (`train_oversampled.json`) is kept as
//! `{id}#2`, `{id}#3`, …; a different record under a used id is a bad row.

mod csv;
mod switches;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use safeguard_core::Verdict;
use serde_json::{Map, Value};

use super::jsonl::{kind, opt_str, records, req_str};
use super::{Builder, DatasetFormat, ImageSource, Item};
use crate::error::EvalError;

pub use switches::declared_non_violating;
use switches::{policy_for, switches};

/// Loads LlavaGuard annotations: a file, or a directory holding one `.json`/`.jsonl`/`.csv`
/// file of the chosen split.
pub(crate) fn load(path: &Path, b: &mut Builder) -> Result<(), EvalError> {
    let file = super::single_file(
        path,
        &["json", "jsonl", "csv"],
        DatasetFormat::LlavaGuard,
        b,
    )?;
    if super::has_ext(&file, &["csv"]) {
        return csv::load(&file, b);
    }
    let mut repeats = Repeats::default();
    for (index, record) in records(&file)? {
        if b.full() {
            break;
        }
        let err = |field: &str, message: String| EvalError::row(&file, index, field, message);
        let item = (|| {
            let obj = record.map_err(|m| err("(record)", m))?;
            let image_text = req_str(&obj, "image").map_err(|m| err("image", m))?;
            let image = b
                .resolve_image(&file, &image_text)
                .map_err(|m| err("image", m))?;
            let (field, allowed) = switches(&obj);
            let allowed = allowed.map_err(|m| err(field, m))?;
            let (field, label) = rating(&obj, !allowed.is_empty());
            let label = label.map_err(|m| err(field, m))?;
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
                id: repeats.id(id, &obj),
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

/// Whole records seen under each id, so that a record repeated on purpose (oversampling)
/// gets `{id}#2`, … while a different record under a used id stays a duplicate.
#[derive(Default)]
struct Repeats {
    /// id → (hash of the first record, copies seen).
    seen: HashMap<String, (u64, usize)>,
}

impl Repeats {
    fn id(&mut self, id: String, record: &Map<String, Value>) -> String {
        let mut hasher = DefaultHasher::new();
        Value::Object(record.clone()).to_string().hash(&mut hasher);
        let hash = hasher.finish();
        match self.seen.get_mut(&id) {
            Some((first, copies)) if *first == hash => {
                *copies += 1;
                format!("{id}#{copies}")
            }
            Some(_) => id,
            None => {
                self.seen.insert(id.clone(), (hash, 1));
                id
            }
        }
    }
}

/// The value of the first turn of `conversations` whose `from` (or `role`) is one of
/// `speakers`.
pub(crate) fn turn<'a>(obj: &'a Map<String, Value>, speakers: &[&str]) -> Option<&'a Value> {
    let Some(Value::Array(turns)) = obj.get("conversations") else {
        return None;
    };
    turns.iter().find_map(|turn| {
        let from = turn.get("from").or_else(|| turn.get("role"))?.as_str()?;
        if speakers.contains(&from) {
            turn.get("value").or_else(|| turn.get("content"))
        } else {
            None
        }
    })
}

/// The rating keys of LlavaGuard's assessment templates, newest first.
const ASSESSMENT_KEYS: &[&str] = &["rating", "decision", "final-assessment", "assessment"];

/// A rating word: `Safe`/`Compliant` or `Unsafe`/`Review Needed`, any case.
fn rating_word(s: &str) -> Option<Verdict> {
    match s.trim().to_ascii_lowercase().as_str() {
        "safe" | "compliant" => Some(Verdict::Safe),
        "unsafe" | "review needed" => Some(Verdict::Unsafe),
        _ => None,
    }
}

/// The label the `gpt` turn's assessment gives; `None` when the record has no such turn.
fn assessment_rating(obj: &Map<String, Value>) -> Option<Result<Verdict, String>> {
    let value = turn(obj, &["gpt", "assistant"])?;
    let parsed;
    let assessment = match value {
        Value::Object(map) => map,
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                parsed = map;
                &parsed
            }
            _ => {
                return Some(Err(format!(
                    "the gpt turn is not an assessment JSON object: {:?}",
                    truncate(text)
                )))
            }
        },
        other => {
            return Some(Err(format!(
                "the gpt turn is {}, not an assessment JSON object",
                kind(other)
            )))
        }
    };
    let found = ASSESSMENT_KEYS.iter().find_map(|key| {
        let verdict = assessment.get(*key)?.as_str().and_then(rating_word)?;
        Some(verdict)
    });
    Some(found.ok_or_else(|| {
        let keys: Vec<&str> = assessment.keys().map(String::as_str).collect();
        format!(
            "the gpt turn's assessment has no rating (one of {} holding Safe/Unsafe or \
             Compliant/Review Needed); its keys: {}",
            ASSESSMENT_KEYS.join(", "),
            keys.join(", ")
        )
    }))
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// The label, and the field it was read from (see the module docs for the order).
/// `switched`: the record's policy allows some category.
fn rating(obj: &Map<String, Value>, switched: bool) -> (&'static str, Result<Verdict, String>) {
    let top = match obj.get("rating") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            rating_word(s).ok_or_else(|| format!("expected \"Safe\" or \"Unsafe\", found {s:?}")),
        ),
        Some(other) => Some(Err(format!(
            "expected \"Safe\" or \"Unsafe\", found {}",
            kind(other)
        ))),
    };
    match (assessment_rating(obj), top) {
        (Some(Err(m)), _) => ("conversations", Err(m)),
        (Some(Ok(inner)), Some(Ok(outer))) if inner != outer => (
            "rating",
            Err(format!(
                "{outer} here, but the gpt turn's assessment says {inner}"
            )),
        ),
        (Some(Ok(inner)), _) => ("conversations", Ok(inner)),
        (None, Some(top)) => ("rating", top),
        (None, None) => match obj.get("final-assessment") {
            None | Some(Value::Null) => (
                "rating",
                Err("missing (no `rating` and no gpt turn with an assessment)".to_string()),
            ),
            Some(_) if switched => (
                "final-assessment",
                Err(
                    "this is the image's human rating under the default policy, not the \
                     label under this record's policy (which declares a category \
                     non-violating); give `rating` or the gpt turn"
                        .to_string(),
                ),
            ),
            Some(Value::String(s)) => (
                "final-assessment",
                rating_word(s).ok_or_else(|| {
                    format!("expected \"Compliant\" or \"Review Needed\", found {s:?}")
                }),
            ),
            Some(other) => (
                "final-assessment",
                Err(format!(
                    "expected \"Compliant\" or \"Review Needed\", found {}",
                    kind(other)
                )),
            ),
        },
    }
}
