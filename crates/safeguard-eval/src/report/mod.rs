//! Reports of evaluation runs, side by side: one self-contained HTML page (inline CSS and SVG,
//! thumbnails as `data:` URLs, no external request) and the same tables as Markdown.
//!
//! - [`load_run`] reads a run directory (`run.json`, `predictions.jsonl`, optional
//!   `summary.json`) into a [`Run`]; metrics are recomputed from the predictions with
//!   `safeguard_core::metrics::compute`, rows without a verdict counting as unassessed. A
//!   missing or malformed file is a [`ReportError`] naming the file and, for predictions, the
//!   line.
//! - [`render_html`] draws the runs table in the paper's Table 6 layout, a per-policy score bar
//!   chart, the cross-policy matrix (Table 3 layout), score histograms and reliability diagrams,
//!   confusion matrices and a gallery of the worst errors.
//! - [`render_markdown`] prints the same tables without plots.
//! - [`sample`] writes synthetic run directories (tests, docs, demos).
//!
//! With [`ReportOptions::quote_paper`], rows quoted from the paper ([`paper`]) are shown beside
//! ours, marked as quoted and never used in any computation.

mod charts;
mod error;
mod html;
mod markdown;
pub mod paper;
mod run;
pub mod sample;
mod table;

use std::path::Path;

pub use error::ReportError;
pub use html::render_html;
pub use markdown::render_markdown;
pub use run::{
    load_run, parse_rows, DatasetMeta, MachineMeta, MetricsSource, PairStats, PolicyMeta, Row, Run,
    RunMeta, MAX_THUMB_BYTES,
};
pub use table::{ScoreRow, ScoreTable};

/// What a report shows beyond the runs themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOptions {
    /// Show the paper's Table 6 and Table 3 rows beside ours, marked as quoted.
    pub quote_paper: bool,
    /// Wrong predictions shown per run in the error gallery (0 = no gallery).
    pub gallery: usize,
    /// Page title; `None` gives a default.
    pub title: Option<String>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            quote_paper: false,
            gallery: 12,
            title: None,
        }
    }
}

impl ReportOptions {
    /// The page title.
    pub fn title(&self) -> String {
        self.title
            .clone()
            .unwrap_or_else(|| "SafeGuard evaluation report".to_string())
    }
}

/// The wrong predictions of `run`, most confident first (rows without `p_unsafe` after the
/// scored ones, in file order), at most `limit`.
pub fn worst_errors(run: &Run, limit: usize) -> Vec<&Row> {
    let mut wrong: Vec<&Row> = run.rows.iter().filter(|r| r.is_wrong()).collect();
    wrong.sort_by(|a, b| {
        let (ca, cb) = (a.confidence(), b.confidence());
        cb.unwrap_or(-1.0).total_cmp(&ca.unwrap_or(-1.0))
    });
    wrong.truncate(limit);
    wrong
}

/// Cuts `text` to `max` characters, whitespace collapsed, with an ellipsis when cut.
pub(crate) fn truncate_text(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    charts::truncate(&collapsed, max)
}

fn io_error(path: &Path, source: std::io::Error) -> ReportError {
    ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_error(path: &Path, line: Option<usize>, message: impl Into<String>) -> ReportError {
    ReportError::Invalid {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}
