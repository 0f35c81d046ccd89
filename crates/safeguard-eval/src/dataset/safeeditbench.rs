//! SafeEditBench as published: parquet files with columns
//!
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `image` | struct `{bytes: binary, path: string}` (or plain binary) | the encoded image |
//! | `image_path` | string | the image's path in the benchmark (ids, pairs, category) |
//! | `safety_label` | integer 0/1 (1 = unsafe); `safe`/`unsafe` strings accepted | the truth |
//! | `policy_name` | string, `L1`…`L5` (`Policy L1` … accepted) | the policy's name |
//! | `policy` | string | the policy text the label holds under |
//!
//! The hub's copy stores `safety_label` and `policy_name` as `datasets` ClassLabel columns:
//! int64 in parquet, the names (`safe`/`unsafe`, `Policy L1` …) in the file's `huggingface`
//! metadata. Those are read through their names, whichever form a file stores. A policy name
//! `Policy L3` is the policy `L3` ([`policy_name`]). A directory with `train-*` and `test-*`
//! files is read one split at a time ([`super::LoadOptions::split`]).
//!
//! Policies come from the rows (`Policy::from_text(policy_name, policy)`), not from our
//! presets; rows of one `policy_name` must carry the same text (a row that differs is bad).
//! The item id is `{policy_name}/{image_path}` (or `{policy_name}/{file stem}-{row}` when the
//! row has no path). When `image.bytes` is null the image is read from `image.path` or
//! `image_path`, relative to the parquet file. Pairs, `category` and `source` come from the
//! path ([`super::pairs`]). The demo benchmark ([`crate::demo`]) has the same layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parquet::record::Row;
use safeguard_core::Policy;

use super::parquet_rows::{self, get, ParquetFile};
use super::{pairs, Builder, DatasetFormat, ImageSource, Item};
use crate::error::EvalError;

const COLUMNS: &[&str] = &[
    "image",
    "image_path",
    "safety_label",
    "policy_name",
    "policy",
];

/// Loads SafeEditBench parquet data (a file, or a directory searched recursively).
pub(crate) fn load(path: &Path, b: &mut Builder) -> Result<(), EvalError> {
    let files = parquet_rows::parquet_files(path)?;
    let files = b.select_split(path, files)?;
    b.set_file_count(files.len());
    let mut texts = PolicyTexts::default();
    let mut paths: Vec<Option<String>> = Vec::new();
    for file in &files {
        let pq = ParquetFile::open(file)?;
        pq.require(
            &["safety_label", "policy_name", "policy"],
            DatasetFormat::SafeEditBench,
        )?;
        if !pq.has("image") && !pq.has("image_path") {
            pq.require(&["image"], DatasetFormat::SafeEditBench)?;
        }
        for (index, row) in pq.rows(COLUMNS)?.enumerate() {
            if b.full() {
                break;
            }
            match read_row(&pq, &row?, index, b, &mut texts) {
                Ok((item, image_path)) => {
                    if b.push(item, file, index)? {
                        paths.push(image_path);
                    }
                }
                Err(err) => b.bad(err)?,
            }
        }
    }
    pairs::assign(b.items_mut(), &paths);
    Ok(())
}

/// The first text seen for each policy name, and where.
#[derive(Default)]
struct PolicyTexts {
    first: HashMap<String, (String, PathBuf, usize)>,
}

fn read_row(
    pq: &ParquetFile,
    row: &Row,
    index: usize,
    b: &mut Builder,
    texts: &mut PolicyTexts,
) -> Result<(Item, Option<String>), EvalError> {
    let file = pq.path.as_path();
    let err = |field: &str, message: String| EvalError::row(file, index, field, message);

    let label = pq
        .verdict(row, "safety_label", "0 (safe) or 1 (unsafe)")
        .map_err(|m| err("safety_label", m))?;
    let policy_name = match pq.label_text(row, "policy_name") {
        Ok(Some(name)) if !name.trim().is_empty() => policy_name(&name),
        Ok(Some(_)) => return Err(err("policy_name", "empty string".to_string())),
        Ok(None) => return Err(err("policy_name", "missing value (null)".to_string())),
        Err(m) => return Err(err("policy_name", m)),
    };
    let text = parquet_rows::req_string(get(row, "policy")).map_err(|m| err("policy", m))?;
    let image_path =
        parquet_rows::opt_string(get(row, "image_path")).map_err(|m| err("image_path", m))?;
    let cell = parquet_rows::image_cell(get(row, "image")).map_err(|m| err("image", m))?;

    // Rows of one policy name must carry one text.
    match texts.first.get(&policy_name) {
        Some((first, first_file, first_index)) if first.trim() != text.trim() => {
            let place = if first_file == file {
                format!("row {first_index}")
            } else {
                format!("{} row {first_index}", first_file.display())
            };
            return Err(err(
                "policy",
                format!(
                    "text differs from the text of policy {policy_name:?} at {place}; rows of \
                     one policy_name must carry the same policy text"
                ),
            ));
        }
        Some(_) => {}
        None => {
            texts.first.insert(
                policy_name.clone(),
                (text.clone(), file.to_path_buf(), index),
            );
        }
    }
    if b.policy(&policy_name).is_none() {
        let policy = Policy::from_text(&policy_name, &text).map_err(|e| EvalError::Row {
            path: file.to_path_buf(),
            index,
            field: "policy".to_string(),
            message: format!("invalid policy text for {policy_name:?}"),
            source: Some(Box::new(e)),
        })?;
        b.add_policy(policy).map_err(|m| err("policy_name", m))?;
    }

    let shown_path = image_path.clone().or_else(|| cell.path.clone());
    let image = match (cell.bytes, &cell.path, &image_path) {
        (Some(bytes), name, _) => ImageSource::Bytes {
            bytes: b.intern_image(bytes),
            name: name.clone().or_else(|| image_path.clone()),
        },
        (None, Some(p), _) | (None, None, Some(p)) => {
            ImageSource::File(b.resolve_image(file, p).map_err(|m| err("image", m))?)
        }
        (None, None, None) => {
            return Err(err(
                "image",
                "no image bytes and no path (image.bytes, image.path and image_path are null)"
                    .to_string(),
            ))
        }
    };

    let info = shown_path.as_deref().map(pairs::analyse);
    let id = match &shown_path {
        Some(p) => format!("{policy_name}/{p}"),
        None => format!("{policy_name}/{}-{index}", pq.stem()),
    };
    let item = Item {
        id,
        image,
        policy: policy_name,
        label,
        category: info.as_ref().and_then(|i| i.category.clone()),
        pair_id: None,
        source: info.and_then(|i| i.role.map(str::to_string)),
    };
    Ok((item, shown_path))
}

/// The policy name items use: `Policy L3`, `policy_L3`, ` L3 ` → `L3`; other names are
/// kept as written (trimmed).
pub fn policy_name(raw: &str) -> String {
    let name = raw.trim();
    let lower = name.to_ascii_lowercase();
    match lower.strip_prefix("policy") {
        Some(rest) if rest.starts_with([' ', '_', '-', ':']) => {
            let rest = name[name.len() - rest.len()..].trim_start_matches([' ', '_', '-', ':']);
            if rest.is_empty() {
                name.to_string()
            } else {
                rest.to_string()
            }
        }
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::policy_name;

    #[test]
    fn policy_prefixes_are_dropped() {
        assert_eq!(policy_name("Policy L3"), "L3");
        assert_eq!(policy_name("policy_L1"), "L1");
        assert_eq!(policy_name(" L3 "), "L3");
        assert_eq!(policy_name("Policy"), "Policy");
        assert_eq!(policy_name("Policyholder"), "Policyholder");
    }
}
