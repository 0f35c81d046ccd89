//! Datasets: benchmark files on disk turned into [`Item`]s, one per (image, policy).
//!
//! [`load`] reads any of the [`DatasetFormat`]s into a [`Dataset`]: its items, the policies
//! they are judged under (by name, in [`Dataset::policies`]) and the rows that could not be
//! used ([`Dataset::skipped`]). [`detect`] tells the format of a path. The formats, column
//! names and rules (pair recovery, bad rows) are described in `docs/eval.md`, "Datasets".
//!
//! - SafeEditBench ([`safeeditbench`]): parquet, policies taken from the rows;
//! - UnsafeBench ([`unsafebench`]): parquet or CSV + image folder, one policy for all;
//! - LlavaGuardBench ([`llavaguard`]): JSON annotations with per-sample category switches;
//! - our JSONL manifest ([`jsonl`]).
//!
//! A bad row (missing or ill-typed field, unknown label, duplicate id, missing image file) is
//! skipped and recorded as a [`BadRow`], or is fatal under [`LoadOptions::strict`].

mod detect;
pub mod jsonl;
pub mod llavaguard;
pub mod pairs;
mod parquet_rows;
pub mod safeeditbench;
pub mod split;
pub mod unsafebench;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use safeguard_core::{Policy, Verdict};

use crate::error::EvalError;

pub use detect::detect;
pub use split::SplitChoice;

/// Where an item's image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A file on disk (already resolved against the dataset file's directory; it existed
    /// when the dataset was loaded).
    File(PathBuf),
    /// Encoded image bytes embedded in the dataset (parquet `image.bytes`), shared between
    /// the items that show the same image under different policies.
    Bytes {
        /// The encoded image (PNG, JPEG, …), as stored.
        bytes: Arc<[u8]>,
        /// The image's original file name or path, when the dataset gives one.
        name: Option<String>,
    },
}

/// One (image, policy) pair with its true verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Unique within the dataset.
    pub id: String,
    /// The image.
    pub image: ImageSource,
    /// Name of the policy the label holds under: a key of [`Dataset::policies`].
    pub policy: String,
    /// The true verdict under that policy.
    pub label: Verdict,
    /// The content category, when the dataset gives one (e.g. `O2: Violence, Harm, or
    /// Cruelty`, `Hate`).
    pub category: Option<String>,
    /// Items that show an unsafe image and its minimally edited safe counterpart share a
    /// pair id.
    pub pair_id: Option<String>,
    /// Where the image comes from (e.g. `Laion5B`, `Lexica`; `original` or `edited` for an
    /// edited pair).
    pub source: Option<String>,
}

/// A row that could not be used and was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 0-based index of the row in its file: the record in parquet, the data row (header
    /// excluded) in CSV, the element of a JSON array, the line of a JSON-lines file.
    pub index: usize,
    /// The field at fault and what is wrong, prefixed with the file name when the dataset
    /// spans several files.
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {} (0-based): {}", self.index, self.reason)
    }
}

/// A loaded benchmark.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name: the file stem or directory name.
    pub name: String,
    /// The format it was read as.
    pub format: DatasetFormat,
    /// The usable rows, in file order.
    pub items: Vec<Item>,
    /// Every policy an item refers to, by the name items use.
    pub policies: BTreeMap<String, Policy>,
    /// Rows skipped as bad (empty under `strict`, where the first bad row is an error).
    pub skipped: Vec<BadRow>,
    /// The split loaded (`test`, `train`, …), when the files are named by split and one was
    /// chosen ([`LoadOptions::split`]) or the one file given is named by split.
    pub split: Option<String>,
}

/// The dataset formats [`load`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetFormat {
    /// SafeEditBench parquet (`image`, `image_path`, `safety_label` 0/1, `policy_name`,
    /// `policy`).
    SafeEditBench,
    /// UnsafeBench parquet, or CSV + images (`image`, `safety_label` Safe/Unsafe,
    /// `category`, `source`).
    UnsafeBench,
    /// LlavaGuard JSON / JSON-lines annotations (`image`, `rating`, `category`, …).
    LlavaGuard,
    /// Our JSONL manifest (`id`, `image`, `policy`, `label`, …).
    Jsonl,
}

impl DatasetFormat {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetFormat::SafeEditBench => "safeeditbench",
            DatasetFormat::UnsafeBench => "unsafebench",
            DatasetFormat::LlavaGuard => "llavaguard",
            DatasetFormat::Jsonl => "jsonl",
        }
    }
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetFormat {
    type Err = EvalError;

    /// Case-insensitive; `llavaguardbench` is accepted for `llavaguard`.
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "safeeditbench" => Ok(DatasetFormat::SafeEditBench),
            "unsafebench" => Ok(DatasetFormat::UnsafeBench),
            "llavaguard" | "llavaguardbench" => Ok(DatasetFormat::LlavaGuard),
            "jsonl" => Ok(DatasetFormat::Jsonl),
            _ => Err(EvalError::UnknownFormatName {
                value: s.to_string(),
            }),
        }
    }
}

/// How to load a dataset.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The format; `None` detects it ([`detect`]).
    pub format: Option<DatasetFormat>,
    /// Make the first bad row an error instead of skipping it.
    pub strict: bool,
    /// UnsafeBench only: the policy to evaluate under (default: the `openai` preset, as the
    /// paper did). Stored in [`Dataset::policies`] under its name.
    pub policy: Option<Policy>,
    /// Stop after this many usable items.
    pub limit: Option<usize>,
    /// Which split of a directory to load ([`split`] tells a file's split from its name).
    pub split: SplitChoice,
    /// Where to look for images whose path, as written, does not exist (the authors'
    /// absolute paths in LlavaGuard's JSON; the images of the hub's LlavaGuard CSV): such a
    /// path is re-rooted on its longest suffix that is a file under this directory.
    pub image_root: Option<PathBuf>,
}

/// Loads a dataset: a file, or a directory holding the format's files (parquet files,
/// searched recursively; or a single CSV, JSON or JSONL file).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset, EvalError> {
    let format = match opts.format {
        Some(format) => format,
        None => detect(path)?,
    };
    let mut builder = Builder::new(opts);
    match format {
        DatasetFormat::SafeEditBench => safeeditbench::load(path, &mut builder)?,
        DatasetFormat::UnsafeBench => unsafebench::load(path, &mut builder)?,
        DatasetFormat::LlavaGuard => llavaguard::load(path, &mut builder)?,
        DatasetFormat::Jsonl => jsonl::load(path, &mut builder)?,
    }
    builder.finish(path, format)
}

/// Collects items while a loader reads rows: enforces unique ids and the limit, turns row
/// errors into [`BadRow`]s (or returns them under `strict`), and keeps the policies.
pub(crate) struct Builder<'a> {
    opts: &'a LoadOptions,
    items: Vec<Item>,
    /// id → (file, row) where it was first seen.
    ids: HashMap<String, (PathBuf, usize)>,
    policies: BTreeMap<String, Policy>,
    skipped: Vec<BadRow>,
    /// Set when the dataset spans several files: bad-row reasons then name the file.
    multi_file: bool,
    /// Image bytes already seen, so that items showing one image share one allocation.
    images: HashSet<Arc<[u8]>>,
    /// The split chosen, if any.
    split: Option<String>,
}

impl<'a> Builder<'a> {
    fn new(opts: &'a LoadOptions) -> Self {
        Builder {
            opts,
            items: Vec::new(),
            ids: HashMap::new(),
            policies: BTreeMap::new(),
            skipped: Vec::new(),
            multi_file: false,
            images: HashSet::new(),
            split: None,
        }
    }

    pub(crate) fn options(&self) -> &LoadOptions {
        self.opts
    }

    /// Tells the builder how many files the dataset has.
    pub(crate) fn set_file_count(&mut self, files: usize) {
        self.multi_file = files > 1;
    }

    /// Keeps the files of the chosen split among `files` (found under `path`; a file given
    /// directly is checked against a `--split` given explicitly) and records the split.
    pub(crate) fn select_split(
        &mut self,
        path: &Path,
        files: Vec<PathBuf>,
    ) -> Result<Vec<PathBuf>, EvalError> {
        let (files, split) = if path.is_dir() {
            split::select(path, files, &self.opts.split)?
        } else {
            let own = split::check_file(path, &self.opts.split)?;
            (files, own)
        };
        self.split = split;
        Ok(files)
    }

    /// Resolves an image path written in `dataset_file` ([`resolve_image`]), falling back on
    /// [`LoadOptions::image_root`]; a missing image is an error message.
    pub(crate) fn resolve_image(
        &self,
        dataset_file: &Path,
        image: &str,
    ) -> Result<PathBuf, String> {
        match resolve_image(dataset_file, image) {
            Ok(path) => Ok(path),
            Err(message) => match &self.opts.image_root {
                Some(root) => reroot(root, Path::new(image.trim())).ok_or_else(|| {
                    format!(
                        "{message}, nor does any tail of it under --image-root {}",
                        root.display()
                    )
                }),
                None => Err(message),
            },
        }
    }

    /// True once `limit` items have been collected: loaders stop reading.
    pub(crate) fn full(&self) -> bool {
        self.opts
            .limit
            .is_some_and(|limit| self.items.len() >= limit)
    }

    /// Records a bad row, or returns it as the error under `strict`.
    pub(crate) fn bad(&mut self, err: EvalError) -> Result<(), EvalError> {
        if self.opts.strict {
            return Err(err);
        }
        let bad = match err {
            EvalError::Row {
                path,
                index,
                field,
                message,
                source,
            } => {
                let mut reason = format!("field `{field}`: {message}");
                if let Some(source) = source {
                    reason.push_str(&format!(": {source}"));
                }
                if self.multi_file {
                    reason = format!("{}: {reason}", file_name(&path));
                }
                BadRow { index, reason }
            }
            other => BadRow {
                index: 0,
                reason: other.to_string(),
            },
        };
        self.skipped.push(bad);
        Ok(())
    }

    /// Adds an item read from row `index` of `path`; a duplicate id makes the row bad.
    /// Returns whether the item was added.
    pub(crate) fn push(
        &mut self,
        item: Item,
        path: &Path,
        index: usize,
    ) -> Result<bool, EvalError> {
        if let Some((first_path, first_index)) = self.ids.get(&item.id) {
            let place = if first_path == path {
                format!("row {first_index}")
            } else {
                format!("{} row {first_index}", first_path.display())
            };
            let message = format!("duplicate id {:?}, first used at {place}", item.id);
            self.bad(EvalError::row(path, index, "id", message))?;
            return Ok(false);
        }
        self.ids
            .insert(item.id.clone(), (path.to_path_buf(), index));
        self.items.push(item);
        Ok(true)
    }

    /// The policy registered under `name`, if any.
    pub(crate) fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name)
    }

    /// Registers a policy under its name. A different policy already registered under the
    /// same name is an error message (for the caller's row error).
    pub(crate) fn add_policy(&mut self, policy: Policy) -> Result<String, String> {
        let name = policy.name.clone();
        match self.policies.get(&name) {
            Some(existing) if *existing != policy => Err(format!(
                "another policy of this dataset is already named {name:?} with a different text"
            )),
            Some(_) => Ok(name),
            None => {
                self.policies.insert(name.clone(), policy);
                Ok(name)
            }
        }
    }

    /// Shares identical image bytes between items.
    pub(crate) fn intern_image(&mut self, bytes: &[u8]) -> Arc<[u8]> {
        if let Some(existing) = self.images.get(bytes) {
            return existing.clone();
        }
        let shared: Arc<[u8]> = Arc::from(bytes);
        self.images.insert(shared.clone());
        shared
    }

    /// Items collected so far (for post-passes such as pair recovery).
    pub(crate) fn items_mut(&mut self) -> &mut Vec<Item> {
        &mut self.items
    }

    fn finish(self, path: &Path, format: DatasetFormat) -> Result<Dataset, EvalError> {
        if self.items.is_empty() {
            return Err(EvalError::Empty {
                path: path.to_path_buf(),
                skipped: self.skipped.len(),
                first: self.skipped.first().map(ToString::to_string),
            });
        }
        // Only policies that some item uses.
        let used: HashSet<&str> = self.items.iter().map(|i| i.policy.as_str()).collect();
        let policies = self
            .policies
            .iter()
            .filter(|(name, _)| used.contains(name.as_str()))
            .map(|(name, policy)| (name.clone(), policy.clone()))
            .collect();
        Ok(Dataset {
            name: dataset_name(path),
            format,
            items: self.items,
            policies,
            skipped: self.skipped,
            split: self.split,
        })
    }
}

/// The file name of a path, for messages.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A dataset's short name: the file stem, or the directory name.
fn dataset_name(path: &Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".to_string())
}

/// Resolves an image path written in a dataset file: relative paths are relative to the
/// directory of that file. A path that is not an existing file is an error message.
pub(crate) fn resolve_image(dataset_file: &Path, image: &str) -> Result<PathBuf, String> {
    let image = image.trim();
    if image.is_empty() {
        return Err("empty image path".to_string());
    }
    let relative = Path::new(image);
    let full = if relative.is_absolute() {
        relative.to_path_buf()
    } else {
        dataset_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(relative)
    };
    if full.is_file() {
        Ok(full)
    } else {
        Err(format!("image file {} does not exist", full.display()))
    }
}

/// `path` re-rooted under `root` on its longest suffix that is a file there: for
/// `/home/a/LlavaGuard/data/smid/x.jpg` and root `data/`, the first of `data/home/a/…`,
/// `data/a/LlavaGuard/…`, …, `data/smid/x.jpg`, `data/x.jpg` that exists. Only the path's
/// normal components count (no root, `.` or `..`); either separator is accepted.
pub fn reroot(root: &Path, path: &Path) -> Option<PathBuf> {
    let text = path.to_string_lossy().replace('\\', "/");
    let parts: Vec<&str> = text
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .filter(|p| !(p.len() == 2 && p.ends_with(':')))
        .collect();
    (0..parts.len()).find_map(|start| {
        let candidate = parts[start..]
            .iter()
            .fold(root.to_path_buf(), |acc, part| acc.join(part));
        candidate.is_file().then_some(candidate)
    })
}

/// The files directly in `dir` (not recursive) whose extension is one of `exts`, sorted.
pub(crate) fn files_with_ext(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, EvalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))? {
        let path = entry.map_err(|e| EvalError::io(dir, e))?.path();
        if path.is_file() && has_ext(&path, exts) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// True when the extension of `path` is one of `exts` (case-insensitive).
pub(crate) fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The one file with one of `exts` in `path` (a directory; of the split chosen, when the
/// files are named by split), or `path` itself when it is a file.
pub(crate) fn single_file(
    path: &Path,
    exts: &[&str],
    format: DatasetFormat,
    b: &mut Builder,
) -> Result<PathBuf, EvalError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(EvalError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        b.select_split(path, vec![path.to_path_buf()])?;
        return Ok(path.to_path_buf());
    }
    let all = files_with_ext(path, exts)?;
    let files = b.select_split(path, all)?;
    match files.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(EvalError::NoDataFile {
            path: path.to_path_buf(),
            message: format!(
                "no .{} file in this directory for a {format} dataset{}",
                exts.join(" or ."),
                subdirectories_hint(path)
            ),
        }),
        many => Err(EvalError::NoDataFile {
            path: path.to_path_buf(),
            message: format!(
                "{} .{} files in this directory ({}); give the one to load, or name their \
                 split with --split",
                many.len(),
                exts.join("/."),
                many.iter()
                    .map(|p| file_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// "; its subdirectories: v22, v24" when `dir` has subdirectories (LlavaGuard-DS keeps one
/// per version), else "".
pub(crate) fn subdirectories_hint(dir: &Path) -> String {
    let mut subdirs: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    subdirs.sort();
    if subdirs.is_empty() {
        String::new()
    } else {
        format!("; give one of its subdirectories: {}", subdirs.join(", "))
    }
}
