//! Splits: which of a dataset directory's files belong to `train`, `test`, ….
//!
//! A file's split is told from its name, as the hub and LlavaGuard's builder write them:
//! - a hub shard `{split}-00000-of-00003.parquet` (any split name);
//! - a file whose stem is a known split name ([`KNOWN`]): `test.json`, `train.csv`,
//!   `train_oversampled.json`, …;
//! - a file inside a directory named by a known split (`data/test/part-0.parquet`).
//!
//! Files matching none of these are *unnamed*. [`select`] keeps the files of the chosen
//! split; the choice is a [`SplitChoice`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::EvalError;

/// Stems and directory names that are split names.
pub const KNOWN: &[&str] = &[
    "train",
    "test",
    "validation",
    "valid",
    "val",
    "eval",
    "dev",
    "all_data",
    "train_oversampled",
    "train_default_policy",
];

/// Which split of a dataset directory to load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SplitChoice {
    /// Every data file (split names are not looked at).
    #[default]
    All,
    /// This split when the files are named by split (absent: an error listing the splits);
    /// when none is named by split, all of them, as under [`SplitChoice::All`]. The eval
    /// CLI's default (`test`) when `--split` is not given.
    Preferred(String),
    /// Exactly this split: an error listing the splits when it is absent, or when the files
    /// are not named by split (`--split NAME` given).
    Named(String),
}

impl SplitChoice {
    fn name(&self) -> Option<&str> {
        match self {
            SplitChoice::All => None,
            SplitChoice::Preferred(name) | SplitChoice::Named(name) => Some(name),
        }
    }
}

/// The split a file belongs to, told from its name (see the module docs); `None` when the
/// name says none. `root` is the directory the dataset was given as.
pub fn split_of(root: &Path, file: &Path) -> Option<String> {
    let stem = file.file_stem()?.to_str()?;
    if let Some(split) = shard_split(stem) {
        return Some(split.to_string());
    }
    if KNOWN.contains(&stem.to_ascii_lowercase().as_str()) {
        return Some(stem.to_string());
    }
    // A directory named by a known split, below the root.
    let relative = file.strip_prefix(root).ok()?;
    relative
        .parent()?
        .components()
        .rev()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|c| KNOWN.contains(&c.to_ascii_lowercase().as_str()))
        .map(str::to_string)
}

/// `test-00000-of-00001` → `test`.
fn shard_split(stem: &str) -> Option<&str> {
    let (head, total) = stem.rsplit_once("-of-")?;
    let (split, index) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(total) && digits(index) && !split.is_empty()).then_some(split)
}

/// The files of the chosen split among `files` (found under `root`, a directory), and the
/// split's name when one was chosen. Errors name `root`, the split asked for and every split
/// found.
pub(crate) fn select(
    root: &Path,
    files: Vec<PathBuf>,
    choice: &SplitChoice,
) -> Result<(Vec<PathBuf>, Option<String>), EvalError> {
    let Some(wanted) = choice.name() else {
        return Ok((files, None));
    };
    if files.is_empty() {
        // Nothing to choose from: the caller says what is missing.
        return Ok((files, None));
    }
    let mut by_split: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut unnamed = Vec::new();
    for file in files {
        match split_of(root, &file) {
            Some(split) => by_split.entry(split).or_default().push(file),
            None => unnamed.push(file),
        }
    }
    if by_split.is_empty() {
        return match choice {
            SplitChoice::Named(_) => Err(EvalError::NotSplit {
                path: root.to_path_buf(),
                split: wanted.to_string(),
                files: names(&unnamed),
            }),
            _ => Ok((unnamed, None)),
        };
    }
    let key = by_split
        .keys()
        .find(|k| k.eq_ignore_ascii_case(wanted))
        .cloned();
    match key {
        Some(key) => {
            let files = by_split.remove(&key).unwrap_or_default();
            Ok((files, Some(key)))
        }
        None => Err(EvalError::NoSuchSplit {
            path: root.to_path_buf(),
            split: wanted.to_string(),
            available: by_split
                .iter()
                .map(|(split, files)| format!("{split} ({})", names(files)))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Checks a dataset given as one file against the split asked for: under
/// [`SplitChoice::Named`] the file's own split must be that one. Returns the file's split.
pub(crate) fn check_file(file: &Path, choice: &SplitChoice) -> Result<Option<String>, EvalError> {
    let root = file.parent().unwrap_or_else(|| Path::new(""));
    let own = split_of(root, file);
    if let SplitChoice::Named(wanted) = choice {
        match &own {
            Some(split) if split.eq_ignore_ascii_case(wanted) => {}
            Some(split) => {
                return Err(EvalError::NoSuchSplit {
                    path: file.to_path_buf(),
                    split: wanted.clone(),
                    available: format!("{split} (this file)"),
                })
            }
            None => {
                return Err(EvalError::NotSplit {
                    path: file.to_path_buf(),
                    split: wanted.clone(),
                    files: super::file_name(file),
                })
            }
        }
    }
    Ok(own)
}

fn names(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| super::file_name(f))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_told_from_hub_and_llavaguard_names() {
        let root = Path::new("/ds");
        let of = |p: &str| split_of(root, Path::new(p));
        assert_eq!(
            of("/ds/data/test-00000-of-00001.parquet").as_deref(),
            Some("test")
        );
        assert_eq!(
            of("/ds/data/my-split-00002-of-00010.parquet").as_deref(),
            Some("my-split")
        );
        assert_eq!(
            of("/ds/train_oversampled.json").as_deref(),
            Some("train_oversampled")
        );
        assert_eq!(
            of("/ds/data/validation/part-0.parquet").as_deref(),
            Some("validation")
        );
        assert_eq!(of("/ds/annotations.json"), None);
        assert_eq!(of("/ds/part-0.parquet"), None);
        assert_eq!(of("/ds/x-of-1.parquet"), None);
    }
}
