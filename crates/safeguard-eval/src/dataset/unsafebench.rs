//! UnsafeBench: real and generated images labelled Safe/Unsafe, all judged under one policy
//! ([`super::LoadOptions::policy`], default the `openai` preset, as the paper did).
//!
//! Two layouts:
//! - **parquet** (as on the hub, `data/train-*.parquet` and `data/test-*.parquet`, read one
//!   split at a time: [`super::LoadOptions::split`]; a file or a directory searched
//!   recursively): `image` (struct `{bytes, path}` or binary; a null `bytes` reads `path`
//!   relative to the file), `safety_label` (`Safe`/`Unsafe`, any case; 0/1 accepted; a
//!   ClassLabel column is read through its names), optional `category`, `source`, `id`. The
//!   hub's `text` column (a caption) and any other column are not read;
//! - **CSV + image folder**: a header row with `image` (path relative to the CSV),
//!   `safety_label`, optional `category`, `source`, `id`.
//!
//! Ids: the `id` column when present, else `{file stem}-{row}` (parquet) or the image path
//! as written (CSV).

use std::path::Path;

use safeguard_core::policy::presets;
use safeguard_core::{Policy, Verdict};

use super::parquet_rows::{self, get, ParquetFile};
use super::{Builder, DatasetFormat, ImageSource, Item};
use crate::error::EvalError;

const EXPECTED: &str = "Safe or Unsafe";

/// Loads UnsafeBench parquet data, or a CSV file (or a directory holding one CSV file).
pub(crate) fn load(path: &Path, b: &mut Builder) -> Result<(), EvalError> {
    let policy = match &b.options().policy {
        Some(policy) => policy.clone(),
        None => default_policy(),
    };
    let policy_name = b
        .add_policy(policy)
        .expect("the first policy of a dataset has no name conflict");
    if is_csv(path)? {
        let file = super::single_file(path, &["csv"], DatasetFormat::UnsafeBench, b)?;
        load_csv(&file, &policy_name, b)
    } else {
        load_parquet(path, &policy_name, b)
    }
}

/// True when `path` is a CSV file, or a directory with no parquet file but a CSV file.
fn is_csv(path: &Path) -> Result<bool, EvalError> {
    if !path.is_dir() {
        return Ok(super::has_ext(path, &["csv"]));
    }
    if parquet_rows::parquet_files(path).is_ok() {
        return Ok(false);
    }
    Ok(!super::files_with_ext(path, &["csv"])?.is_empty())
}

fn load_parquet(path: &Path, policy: &str, b: &mut Builder) -> Result<(), EvalError> {
    let files = parquet_rows::parquet_files(path)?;
    let files = b.select_split(path, files)?;
    b.set_file_count(files.len());
    for file in &files {
        let pq = ParquetFile::open(file)?;
        pq.require(&["image", "safety_label"], DatasetFormat::UnsafeBench)?;
        let columns = ["id", "image", "safety_label", "category", "source"];
        for (index, row) in pq.rows(&columns)?.enumerate() {
            if b.full() {
                break;
            }
            let row = row?;
            let err = |field: &str, message: String| EvalError::row(file, index, field, message);
            let item = (|| {
                let label = pq
                    .verdict(&row, "safety_label", EXPECTED)
                    .map_err(|m| err("safety_label", m))?;
                let cell =
                    parquet_rows::image_cell(get(&row, "image")).map_err(|m| err("image", m))?;
                let image = match (cell.bytes, cell.path) {
                    (Some(bytes), name) => ImageSource::Bytes {
                        bytes: b.intern_image(bytes),
                        name,
                    },
                    (None, Some(p)) => {
                        ImageSource::File(b.resolve_image(file, &p).map_err(|m| err("image", m))?)
                    }
                    (None, None) => {
                        return Err(err("image", "no image bytes and no path".to_string()))
                    }
                };
                let text = |name: &str| {
                    parquet_rows::opt_string(get(&row, name))
                        .map(|v| v.filter(|s| !s.trim().is_empty()))
                        .map_err(|m| err(name, m))
                };
                let id = parquet_rows::id(get(&row, "id")).map_err(|m| err("id", m))?;
                Ok(Item {
                    id: id.unwrap_or_else(|| format!("{}-{index}", pq.stem())),
                    image,
                    policy: policy.to_string(),
                    label,
                    category: text("category")?,
                    pair_id: None,
                    source: text("source")?,
                })
            })();
            match item {
                Ok(item) => {
                    b.push(item, file, index)?;
                }
                Err(e) => b.bad(e)?,
            }
        }
    }
    Ok(())
}

fn load_csv(file: &Path, policy: &str, b: &mut Builder) -> Result<(), EvalError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(file)
        .map_err(|source| EvalError::Csv {
            path: file.to_path_buf(),
            source,
        })?;
    let headers = reader
        .headers()
        .map_err(|source| EvalError::Csv {
            path: file.to_path_buf(),
            source,
        })?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    for required in ["image", "safety_label"] {
        if column(required).is_none() {
            return Err(EvalError::MissingColumn {
                path: file.to_path_buf(),
                column: required.to_string(),
                format: DatasetFormat::UnsafeBench,
                found: headers.iter().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let (image_col, label_col) = (column("image"), column("safety_label"));
    let (category_col, source_col, id_col) = (column("category"), column("source"), column("id"));
    for (index, record) in reader.records().enumerate() {
        if b.full() {
            break;
        }
        let err = |field: &str, message: String| EvalError::row(file, index, field, message);
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                b.bad(err("(record)", format!("unreadable CSV record: {e}")))?;
                continue;
            }
        };
        let cell = |col: Option<usize>| {
            col.and_then(|c| record.get(c))
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let item = (|| {
            let label_text =
                cell(label_col).ok_or_else(|| err("safety_label", "missing value".to_string()))?;
            let label = Verdict::from_label(label_text).ok_or_else(|| {
                err(
                    "safety_label",
                    format!("expected {EXPECTED}, found {label_text:?}"),
                )
            })?;
            let image_text =
                cell(image_col).ok_or_else(|| err("image", "missing value".to_string()))?;
            let image = b
                .resolve_image(file, image_text)
                .map_err(|m| err("image", m))?;
            Ok(Item {
                id: cell(id_col).unwrap_or(image_text).to_string(),
                image: ImageSource::File(image),
                policy: policy.to_string(),
                label,
                category: cell(category_col).map(str::to_string),
                pair_id: None,
                source: cell(source_col).map(str::to_string),
            })
        })();
        match item {
            Ok(item) => {
                b.push(item, file, index)?;
            }
            Err(e) => b.bad(e)?,
        }
    }
    Ok(())
}

/// The policy UnsafeBench is judged under when none is given.
pub fn default_policy() -> Policy {
    presets::get("openai").expect("the openai preset exists")
}
