//! The error of loading run directories.

use std::path::PathBuf;

/// What can go wrong reading a run directory. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the run directory is malformed.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line at fault, counted from 1, when known.
        line: Option<usize>,
        /// What is wrong and, where it helps, what would fix it.
        message: String,
    },
}
