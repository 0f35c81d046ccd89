//! `safeguard report RUN_DIR...`: evaluation runs side by side, as one self-contained HTML page
//! and optionally Markdown tables.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use safeguard_eval::report::{self, ReportOptions};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Run directories written by `safeguard eval` (run.json, predictions.jsonl, optional
    /// summary.json), shown in this order.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// The HTML report to write (one file: CSS, charts and thumbnails inline).
    #[arg(long, default_value = "report.html", value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the tables as Markdown (for issues and pull requests).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Show the paper's numbers (Table 6 guards, Table 3 cross-policy) beside ours, marked as
    /// quoted.
    #[arg(long)]
    pub quote_paper: bool,
    /// Wrong predictions shown per run in the error gallery (0: no gallery).
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub gallery: usize,
    /// Title of the report.
    #[arg(long)]
    pub title: Option<String>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let runs = args
        .runs
        .iter()
        .map(|dir| report::load_run(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let options = ReportOptions {
        quote_paper: args.quote_paper,
        gallery: args.gallery,
        title: args.title,
    };
    std::fs::write(&args.out, report::render_html(&runs, &options))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    if let Some(path) = &args.markdown {
        std::fs::write(path, report::render_markdown(&runs, &options))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    for run in &runs {
        for note in &run.notes {
            eprintln!("note: {}: {note}", run.name());
        }
    }
    Ok(ExitCode::SUCCESS)
}
