//! The one error type of `safeguard-eval`.

use std::path::PathBuf;

use crate::dataset::DatasetFormat;

/// Everything that can go wrong while loading or writing a dataset. Each variant names the
/// file at fault; row-level variants also name the row (0-based index within its file) and
/// the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A parquet file that cannot be opened, read or written.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The parquet crate's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A CSV file whose header cannot be read.
    #[error("{}: CSV: {source}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The CSV reader's error.
        #[source]
        source: csv::Error,
    },
    /// A `.json` file that is neither a JSON array nor JSON lines.
    #[error("{}: not a JSON array of objects nor JSON lines: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The JSON parser's error (for the whole-file parse).
        #[source]
        source: serde_json::Error,
    },
    /// A row that cannot be used. Without `strict` it is skipped and recorded as a
    /// [`crate::dataset::BadRow`] instead.
    #[error("{}: row {index} (0-based), field `{field}`: {message}", path.display())]
    Row {
        /// The file the row is in.
        path: PathBuf,
        /// 0-based index of the row in its file: the record index in parquet, the data row
        /// (header excluded) in CSV, the element in a JSON array, the line in JSON lines.
        index: usize,
        /// The field (column or key) at fault.
        field: String,
        /// What is wrong and, where it helps, what would fix it.
        message: String,
        /// The error beneath, when there is one (e.g. an invalid policy).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A file that lacks a column its format needs.
    #[error(
        "{}: no column `{column}`, which a {format} file needs; its columns are: {found}",
        path.display()
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The format being read.
        format: DatasetFormat,
        /// The columns the file has, comma-separated.
        found: String,
    },
    /// A path whose dataset format cannot be told; `--format` picks one.
    #[error(
        "{}: cannot tell the dataset format: {reason}; give it with --format \
         (safeeditbench, unsafebench, llavaguard or jsonl)",
        path.display()
    )]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
        /// What was looked at and why it did not match.
        reason: String,
    },
    /// A format name that is not one of ours.
    #[error("unknown dataset format {value:?}; expected safeeditbench, unsafebench, llavaguard or jsonl")]
    UnknownFormatName {
        /// The name given.
        value: String,
    },
    /// A directory without the files a format needs, or with too many candidates.
    #[error("{}: {message}", path.display())]
    NoDataFile {
        /// The directory.
        path: PathBuf,
        /// What was looked for.
        message: String,
    },
    /// A split that the dataset does not have (`--split`).
    #[error("{}: no split `{split}`; the splits here are: {available}; choose one with --split", path.display())]
    NoSuchSplit {
        /// The dataset path.
        path: PathBuf,
        /// The split asked for.
        split: String,
        /// The splits found, each with its files.
        available: String,
    },
    /// `--split` asked for, but no file of the dataset is named by split.
    #[error(
        "{}: --split {split} was asked for, but no file here is named by split ({files}); \
         give the file to load, or leave out --split",
        path.display()
    )]
    NotSplit {
        /// The dataset path.
        path: PathBuf,
        /// The split asked for.
        split: String,
        /// The files found, comma-separated.
        files: String,
    },
    /// A dataset whose images are given only as URLs (the hub's LlavaGuard CSV) and none of
    /// which is present locally.
    #[error(
        "{}: the images of this dataset are only URLs (e.g. {example}); none of its {rows} \
         rows has a local image. Download them and pass --image-root DIR holding `{{id}}.jpg` \
         (or .png/.jpeg/.webp) or the URL's file name; looked in: {looked}",
        path.display()
    )]
    ImagesOnlyUrls {
        /// The dataset file.
        path: PathBuf,
        /// How many rows it has.
        rows: usize,
        /// The first row's URL.
        example: String,
        /// The directories searched.
        looked: String,
    },
    /// A dataset in which no row could be used.
    #[error("{}: no usable rows ({skipped} skipped){}", path.display(), first_reason(.first))]
    Empty {
        /// The dataset path.
        path: PathBuf,
        /// How many rows were skipped as bad.
        skipped: usize,
        /// Why the first bad row was skipped, when any was.
        first: Option<String>,
    },
    /// The policy given for a dataset is invalid (e.g. an unknown LlavaGuard category).
    #[error("{}: policy: {source}", path.display())]
    Policy {
        /// The dataset path.
        path: PathBuf,
        /// The policy error.
        #[source]
        source: safeguard_core::Error,
    },
    /// A demo image that could not be encoded.
    #[error("demo image {name}: {source}")]
    Image {
        /// The image's file name in the demo data set.
        name: String,
        /// The encoder's error.
        #[source]
        source: image::ImageError,
    },
    /// An evaluation run that cannot start or continue (an existing run without --resume, a
    /// resume that differs from the run on disk, a corrupt predictions line).
    #[error("{}: {reason}", path.display())]
    Run {
        /// The run directory or the file in it.
        path: PathBuf,
        /// What is wrong and what would fix it.
        reason: String,
    },
    /// A run directory that a report cannot read.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
}

fn first_reason(first: &Option<String>) -> String {
    match first {
        Some(reason) => format!("; the first: {reason}"),
        None => String::new(),
    }
}

impl EvalError {
    /// A row error without an underlying cause.
    pub(crate) fn row(
        path: &std::path::Path,
        index: usize,
        field: &str,
        message: impl Into<String>,
    ) -> EvalError {
        EvalError::Row {
            path: path.to_path_buf(),
            index,
            field: field.to_string(),
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> EvalError {
        EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parquet(
        path: &std::path::Path,
        source: parquet::errors::ParquetError,
    ) -> EvalError {
        EvalError::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }
}
