//! Telling a dataset's format from its files.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::parquet_rows::{self, ParquetFile};
use super::{files_with_ext, has_ext, DatasetFormat};
use crate::error::EvalError;

/// Tells the format of a dataset path:
/// - parquet (a `.parquet` file, or a directory with parquet files below it): a
///   `policy_name` column → SafeEditBench; a string or ClassLabel `safety_label` column →
///   UnsafeBench;
/// - `.csv` with a `safety_label` column → UnsafeBench; with `rating` → LlavaGuard (the
///   hub's `id, url, rating, category, policy`);
/// - `.json` / `.jsonl`: the first record has `rating`, `final-assessment` or
///   `conversations` → LlavaGuard; it has `label` → our JSONL manifest;
/// - a directory without parquet files: its `.csv`, `.jsonl` or `.json` files, as above
///   (several of one extension, as in LlavaGuard-DS/vN/: told from `test.*`, else the
///   first).
///
/// Anything else is [`EvalError::UnknownFormat`], saying what was found.
pub fn detect(path: &Path) -> Result<DatasetFormat, EvalError> {
    if !path.exists() {
        return Err(EvalError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let unknown = |reason: String| EvalError::UnknownFormat {
        path: path.to_path_buf(),
        reason,
    };
    let file = if path.is_dir() {
        if let Ok(files) = parquet_rows::parquet_files(path) {
            return detect_parquet(&files[0]);
        }
        let candidates = files_with_ext(path, &["csv", "jsonl", "ndjson", "json"])?;
        let one_ext = candidates.windows(2).all(|w| {
            let ext = |p: &Path| p.extension().map(|e| e.to_ascii_lowercase());
            ext(&w[0]) == ext(&w[1])
        });
        match candidates.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(unknown(format!(
                    "the directory holds no .parquet, .csv, .json or .jsonl file{}",
                    super::subdirectories_hint(path)
                )))
            }
            [first, ..] if one_ext => candidates
                .iter()
                .find(|f| {
                    f.file_stem()
                        .is_some_and(|s| s.eq_ignore_ascii_case("test"))
                })
                .unwrap_or(first)
                .clone(),
            many => {
                return Err(unknown(format!(
                    "the directory holds several data files ({}); give the one to load",
                    names(many)
                )))
            }
        }
    } else {
        path.to_path_buf()
    };
    if has_ext(&file, &["parquet"]) {
        detect_parquet(&file)
    } else if has_ext(&file, &["csv"]) {
        detect_csv(&file)
    } else if has_ext(&file, &["json", "jsonl", "ndjson"]) {
        detect_json(&file)
    } else {
        Err(EvalError::UnknownFormat {
            path: file.clone(),
            reason: "the extension is not .parquet, .csv, .json or .jsonl".to_string(),
        })
    }
}

fn names(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| super::file_name(f))
        .collect::<Vec<_>>()
        .join(", ")
}

fn detect_parquet(file: &Path) -> Result<DatasetFormat, EvalError> {
    let pq = ParquetFile::open(file)?;
    if pq.has("policy_name") {
        return Ok(DatasetFormat::SafeEditBench);
    }
    if pq.is_byte_array("safety_label") || pq.class_names("safety_label").is_some() {
        return Ok(DatasetFormat::UnsafeBench);
    }
    let reason = if pq.has("safety_label") {
        "a numeric `safety_label` without `policy_name` (SafeEditBench needs `policy_name` and \
         `policy`; UnsafeBench writes Safe/Unsafe strings)"
            .to_string()
    } else {
        "no `policy_name` nor `safety_label` column".to_string()
    };
    Err(EvalError::UnknownFormat {
        path: file.to_path_buf(),
        reason: format!("{reason}; columns: {}", pq.columns().join(", ")),
    })
}

fn detect_csv(file: &Path) -> Result<DatasetFormat, EvalError> {
    let mut reader = csv::Reader::from_path(file).map_err(|source| EvalError::Csv {
        path: file.to_path_buf(),
        source,
    })?;
    let headers = reader.headers().map_err(|source| EvalError::Csv {
        path: file.to_path_buf(),
        source,
    })?;
    if headers.iter().any(|h| h.trim() == "safety_label") {
        return Ok(DatasetFormat::UnsafeBench);
    }
    if headers.iter().any(|h| h.trim() == "rating") {
        return Ok(DatasetFormat::LlavaGuard);
    }
    Err(EvalError::UnknownFormat {
        path: file.to_path_buf(),
        reason: format!(
            "a CSV file without a `safety_label` (UnsafeBench) or `rating` (LlavaGuard) \
             column; columns: {}",
            headers.iter().collect::<Vec<_>>().join(", ")
        ),
    })
}

fn detect_json(file: &Path) -> Result<DatasetFormat, EvalError> {
    let records = super::jsonl::records(file)?;
    let first = records.into_iter().find_map(|(_, r)| r.ok());
    let unknown = |reason: String| EvalError::UnknownFormat {
        path: file.to_path_buf(),
        reason,
    };
    let Some(first) = first else {
        return Err(unknown("no JSON object found".to_string()));
    };
    let has = |key: &str| first.get(key).is_some_and(|v| !matches!(v, Value::Null));
    if has("rating") || has("final-assessment") || has("conversations") {
        Ok(DatasetFormat::LlavaGuard)
    } else if has("label") {
        Ok(DatasetFormat::Jsonl)
    } else {
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        Err(unknown(format!(
            "the first record has neither `rating` (LlavaGuard) nor `label` (JSONL manifest); \
             its keys: {}",
            keys.join(", ")
        )))
    }
}
