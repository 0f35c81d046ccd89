//! Our canonical dataset manifest: JSON lines, one object per (image, policy):
//!
//! ```json
//! {"id": "beach-07@L3", "image": "images/beach-07.jpg", "policy": "L3", "label": "unsafe",
//!  "category": "nudity", "pair_id": "beach-07", "source": "demo"}
//! ```
//!
//! - `id`: non-empty string, unique in the file;
//! - `image`: path relative to the manifest (absolute paths are kept); the file must exist;
//! - `policy`: a preset name (`L1`…`L5`, `llavaguard`, `openai`, `unsafebench`, any case), or
//!   the path of a policy file (`.md`, `.toml`, `.txt`) relative to the manifest. Items refer
//!   to the policy by its name (the preset name, or the file's policy name / stem); two
//!   different policies with one name are an error on the later row;
//! - `label`: `safe`/`unsafe` (any case) or `0`/`1` (1 = unsafe), as a string or a number;
//! - `category`, `pair_id`, `source`: optional strings (null = absent).
//!
//! Blank lines are allowed; row indexes are 0-based line indexes (blank lines count).

use std::collections::HashMap;
use std::path::Path;

use safeguard_core::policy::presets;
use safeguard_core::{Policy, Verdict};
use serde_json::{Map, Value};

use super::{Builder, DatasetFormat, ImageSource, Item};
use crate::error::EvalError;

/// Loads a JSONL manifest (a file, or a directory holding one `.jsonl` file).
pub(crate) fn load(path: &Path, b: &mut Builder) -> Result<(), EvalError> {
    let file = super::single_file(path, &["jsonl", "ndjson"], DatasetFormat::Jsonl, b)?;
    // Policy spec as written → policy name (failures are not cached: each bad row says why).
    let mut resolved: HashMap<String, String> = HashMap::new();
    for (index, record) in records(&file)? {
        if b.full() {
            break;
        }
        let err = |field: &str, message: String| EvalError::row(&file, index, field, message);
        let item = (|| {
            let obj = record.map_err(|m| err("(record)", m))?;
            let id = req_str(&obj, "id").map_err(|m| err("id", m))?;
            let image_text = req_str(&obj, "image").map_err(|m| err("image", m))?;
            let label = label(obj.get("label")).map_err(|m| err("label", m))?;
            let spec = req_str(&obj, "policy").map_err(|m| err("policy", m))?;
            let image = b
                .resolve_image(&file, &image_text)
                .map_err(|m| err("image", m))?;
            let policy = match resolved.get(&spec) {
                Some(name) => name.clone(),
                None => {
                    let name = resolve_policy(&file, &spec, b).map_err(|(message, source)| {
                        EvalError::Row {
                            path: file.clone(),
                            index,
                            field: "policy".to_string(),
                            message,
                            source: source.map(|e| Box::new(e) as _),
                        }
                    })?;
                    resolved.insert(spec, name.clone());
                    name
                }
            };
            Ok(Item {
                id,
                image: ImageSource::File(image),
                policy,
                label,
                category: opt_str(&obj, "category").map_err(|m| err("category", m))?,
                pair_id: opt_str(&obj, "pair_id").map_err(|m| err("pair_id", m))?,
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

/// A preset name, or a policy file relative to the manifest; registers the policy.
fn resolve_policy(
    manifest: &Path,
    spec: &str,
    b: &mut Builder,
) -> Result<String, (String, Option<safeguard_core::Error>)> {
    let policy = match presets::get(spec) {
        Some(policy) => policy,
        None => {
            let dir = manifest.parent().unwrap_or_else(|| Path::new("."));
            let file = dir.join(spec);
            if !file.is_file() {
                return Err((
                    format!(
                        "{spec:?} is neither a preset ({}) nor a policy file ({} does not exist)",
                        presets::names().join(", "),
                        file.display()
                    ),
                    None,
                ));
            }
            Policy::from_file(&file).map_err(|e| {
                (
                    format!("cannot use policy file {}", file.display()),
                    Some(e),
                )
            })?
        }
    };
    b.add_policy(policy).map_err(|m| (m, None))
}

/// The records of a JSON-lines file, or of a `.json` file holding an array of objects (or
/// JSON lines). Each is `(0-based index, object or why not)`.
pub(crate) type Records = Vec<(usize, Result<Map<String, Value>, String>)>;

/// Reads the records of a JSON or JSON-lines file; see [`Records`]. A file starting with `[`
/// is one JSON array (an unparsable one is an error for the whole file); anything else is
/// read line by line, skipping blank lines.
pub(crate) fn records(file: &Path) -> Result<Records, EvalError> {
    let text = std::fs::read_to_string(file).map_err(|e| EvalError::io(file, e))?;
    let as_object = |value: Value| match value {
        Value::Object(obj) => Ok(obj),
        other => Err(format!("expected a JSON object, found {}", kind(&other))),
    };
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(&text).map_err(|source| EvalError::Json {
            path: file.to_path_buf(),
            source,
        })?;
        return Ok(values.into_iter().map(as_object).enumerate().collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let record = serde_json::from_str::<Value>(line)
                .map_err(|e| format!("not valid JSON: {e}"))
                .and_then(as_object);
            (index, record)
        })
        .collect())
}

/// The JSON type of a value, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A required non-empty string field.
pub(crate) fn req_str(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Err("missing".to_string()),
        Some(Value::String(s)) if s.trim().is_empty() => Err("empty string".to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("expected a string, found {}", kind(other))),
    }
}

/// An optional string field (null or an empty string = absent).
pub(crate) fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("expected a string, found {}", kind(other))),
    }
}

/// `label`: `safe`/`unsafe`/`0`/`1` as a string, or 0/1 as a number.
fn label(value: Option<&Value>) -> Result<Verdict, String> {
    let expected = "expected \"safe\" or \"unsafe\" (or 0/1, 1 = unsafe)";
    match value {
        None | Some(Value::Null) => Err("missing".to_string()),
        Some(Value::String(s)) => {
            Verdict::from_label(s).ok_or_else(|| format!("{expected}, found {s:?}"))
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok(Verdict::Safe),
            Some(1) => Ok(Verdict::Unsafe),
            _ => Err(format!("{expected}, found {n}")),
        },
        Some(other) => Err(format!("{expected}, found {}", kind(other))),
    }
}
