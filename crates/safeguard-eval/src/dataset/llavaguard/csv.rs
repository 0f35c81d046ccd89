//! The hub's LlavaGuard CSV layout: a header row with `id`, `url`, `rating`, `category`,
//! `policy` (the policy prompt, read for its switches as in the JSON layout). The images are
//! not in the file: only their URLs. They are used when present locally, found as
//! `{id}.jpg` (or `.jpeg`, `.png`, `.webp`) or as the URL's path (its longest suffix) under
//! `--image-root`, the CSV's directory or its `images/` subdirectory; an `image` column, when
//! present, is a path as in the JSON layout. A row whose image is only a URL is a bad row
//! that says so, and a file none of whose images is present is an error
//! ([`EvalError::ImagesOnlyUrls`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::super::{reroot, Builder, ImageSource, Item};
use super::{policy_for, rating_word};
use crate::dataset::DatasetFormat;
use crate::error::EvalError;

/// Image extensions tried after `{id}`.
const EXTS: &[&str] = &["jpg", "jpeg", "png", "webp"];

pub(crate) fn load(file: &Path, b: &mut Builder) -> Result<(), EvalError> {
    let csv_err = |source| EvalError::Csv {
        path: file.to_path_buf(),
        source,
    };
    let mut reader = ::csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(file)
        .map_err(csv_err)?;
    let headers = reader.headers().map_err(csv_err)?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    if column("rating").is_none() {
        return Err(EvalError::MissingColumn {
            path: file.to_path_buf(),
            column: "rating".to_string(),
            format: DatasetFormat::LlavaGuard,
            found: headers.iter().collect::<Vec<_>>().join(", "),
        });
    }
    if column("url").is_none() && column("image").is_none() {
        return Err(EvalError::MissingColumn {
            path: file.to_path_buf(),
            column: "url (or image)".to_string(),
            format: DatasetFormat::LlavaGuard,
            found: headers.iter().collect::<Vec<_>>().join(", "),
        });
    }
    let dirs = search_dirs(file, b);
    let (mut rows, mut url_only, mut first_url) = (0usize, 0usize, None);
    for (index, record) in reader.records().enumerate() {
        if b.full() {
            break;
        }
        rows += 1;
        let err = |field: &str, message: String| EvalError::row(file, index, field, message);
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                b.bad(err("(record)", format!("unreadable CSV record: {e}")))?;
                continue;
            }
        };
        let cell = |name: &str| {
            column(name)
                .and_then(|c| record.get(c))
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let item = (|| {
            let rating = cell("rating").ok_or_else(|| err("rating", "missing value".into()))?;
            let label = rating_word(rating).ok_or_else(|| {
                err(
                    "rating",
                    format!("expected \"Safe\" or \"Unsafe\", found {rating:?}"),
                )
            })?;
            let id = cell("id").or(cell("url")).or(cell("image"));
            let id = id.ok_or_else(|| err("id", "missing value (and no url)".into()))?;
            let image = match cell("image") {
                Some(image) => b.resolve_image(file, image).map_err(|m| err("image", m))?,
                None => {
                    let url = cell("url").unwrap_or_default();
                    match find_local(&dirs, cell("id"), url) {
                        Some(path) => path,
                        None => {
                            url_only += 1;
                            first_url.get_or_insert_with(|| url.to_string());
                            return Err(err(
                                "url",
                                format!(
                                    "the image is only a URL ({url}); no local copy as {}.{} \
                                     or as the URL's path under {}",
                                    cell("id").unwrap_or("{id}"),
                                    EXTS.join("/."),
                                    looked(&dirs)
                                ),
                            ));
                        }
                    }
                }
            };
            let allowed: BTreeSet<String> = match cell("policy") {
                Some(prompt) => {
                    let mut obj = Map::new();
                    obj.insert("policy".to_string(), Value::String(prompt.to_string()));
                    let (_, allowed) = super::switches(&obj);
                    allowed.map_err(|m| err("policy", m))?
                }
                None => BTreeSet::new(),
            };
            let policy = policy_for(&allowed, b).map_err(|(message, source)| EvalError::Row {
                path: file.to_path_buf(),
                index,
                field: "policy".to_string(),
                message,
                source: source.map(|e| Box::new(e) as _),
            })?;
            Ok(Item {
                id: id.to_string(),
                image: ImageSource::File(image),
                policy,
                label,
                category: cell("category").map(str::to_string),
                pair_id: None,
                source: cell("source").map(str::to_string),
            })
        })();
        match item {
            Ok(item) => {
                b.push(item, file, index)?;
            }
            Err(e) => b.bad(e)?,
        }
    }
    if rows > 0 && url_only == rows {
        return Err(EvalError::ImagesOnlyUrls {
            path: file.to_path_buf(),
            rows,
            example: first_url.unwrap_or_default(),
            looked: looked(&dirs),
        });
    }
    Ok(())
}

/// Where local copies of the images are looked for: `--image-root`, the CSV's directory and
/// its `images/` subdirectory (those that exist).
fn search_dirs(file: &Path, b: &Builder) -> Vec<PathBuf> {
    let here = file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    let mut dirs: Vec<PathBuf> = b.options().image_root.iter().cloned().collect();
    dirs.push(here.join("images"));
    dirs.push(here);
    dirs.retain(|d| d.is_dir());
    dirs
}

fn looked(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no directory)".to_string();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The local copy of a row's image, in each directory in turn: `{name}.{ext}` for the id,
/// the id without a LlavaGuard copy suffix (`x_v2`, `x_v3_a` show the image of `x`) and the
/// URL's file stem; else the URL's path re-rooted.
fn find_local(dirs: &[PathBuf], id: Option<&str>, url: &str) -> Option<PathBuf> {
    let url_path = url
        .split_once("://")
        .map(|(_, rest)| rest.split_once('/').map(|(_, p)| p).unwrap_or(""))
        .unwrap_or(url);
    let url_path = url_path.split(['?', '#']).next().unwrap_or("");
    let url_stem = Path::new(url_path).file_stem().and_then(|s| s.to_str());
    let mut stems: Vec<&str> = Vec::new();
    for stem in [id, id.map(base_id), url_stem].into_iter().flatten() {
        if !stem.is_empty() && !stems.contains(&stem) {
            stems.push(stem);
        }
    }
    dirs.iter().find_map(|dir| {
        let named = stems.iter().find_map(|stem| {
            EXTS.iter()
                .map(|ext| dir.join(format!("{stem}.{ext}")))
                .find(|p| p.is_file())
        });
        named.or_else(|| (!url_path.is_empty()).then(|| reroot(dir, Path::new(url_path)))?)
    })
}

/// `x_v2` → `x`, `x_v3_a` → `x`; other ids unchanged.
fn base_id(id: &str) -> &str {
    let is_copy = |v: &str| {
        v.strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let Some((head, last)) = id.rsplit_once('_') else {
        return id;
    };
    if is_copy(last) {
        return head;
    }
    let letter = last.len() == 1 && last.bytes().all(|b| b.is_ascii_lowercase());
    match head.rsplit_once('_') {
        Some((base, v)) if letter && is_copy(v) => base,
        _ => id,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_suffixes_are_stripped() {
        assert_eq!(super::base_id("smid_0001_v2"), "smid_0001");
        assert_eq!(super::base_id("smid_0001_v3_a"), "smid_0001");
        assert_eq!(super::base_id("smid_0001"), "smid_0001");
        assert_eq!(super::base_id("a_view"), "a_view");
    }
}
