//! `safeguard metrics PREDICTIONS`: benchmark metrics from a predictions file.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use safeguard_core::metrics::{self, BootstrapOptions, GroupMetrics, MetricsReport};
use safeguard_core::predictions;

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// Predictions: JSONL, or CSV (`.csv`) with columns id, policy, label, pred and optional
    /// p_unsafe.
    pub predictions: PathBuf,
    /// Print the metrics JSON (keys per_policy, macro, pooled) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Add bootstrap confidence intervals from this many resamples (e.g. 1000).
    #[arg(long, value_name = "N")]
    pub bootstrap: Option<usize>,
    /// Seed of the bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Confidence level of the bootstrap intervals.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    if !(args.level > 0.0 && args.level < 1.0) {
        anyhow::bail!("--level must be between 0 and 1 (got {})", args.level);
    }
    let file = predictions::read_file_all(&args.predictions)?;
    let rows = &file.rows;
    let unassessed = Unassessed::of(&file.unassessed);
    let mut report = metrics::compute(rows);
    if let (Some(resamples), false) = (args.bootstrap, report.is_empty()) {
        if resamples == 0 {
            anyhow::bail!("--bootstrap needs at least one resample");
        }
        let options = BootstrapOptions {
            resamples,
            seed: args.seed,
            level: args.level,
        };
        report.bootstrap = Some(metrics::bootstrap(rows, &options));
    }
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(object) = value.as_object_mut() {
            if report.is_empty() {
                object.insert("macro".to_string(), serde_json::Value::Null);
            }
            // The same counts, under the same names, as the run's summary.json.
            object.insert("assessed".to_string(), rows.len().into());
            object.insert("unassessed".to_string(), unassessed.unassessed.into());
            object.insert("errors".to_string(), unassessed.errors.into());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if report.is_empty() {
        println!(
            "no item was assessed: none of the {} rows has a verdict ({}); no metrics",
            unassessed.total(),
            unassessed.breakdown()
        );
    } else {
        print!("{}", table(&report));
        if unassessed.total() > 0 {
            println!(
                "not in the metrics: {} of {} rows have no verdict, pred null ({})",
                unassessed.total(),
                unassessed.total() + rows.len(),
                unassessed.breakdown()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rows without a verdict, counted apart from the metrics as in summary.json.
struct Unassessed {
    /// Rows the guard gave no verdict for.
    unassessed: usize,
    /// Rows with an `error` (the item failed).
    errors: usize,
}

impl Unassessed {
    fn of(rows: &[predictions::Unassessed]) -> Self {
        let errors = rows.iter().filter(|r| r.error.is_some()).count();
        Unassessed {
            unassessed: rows.len() - errors,
            errors,
        }
    }

    fn total(&self) -> usize {
        self.unassessed + self.errors
    }

    fn breakdown(&self) -> String {
        format!("{} unassessed, {} failed", self.unassessed, self.errors)
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

fn row(out: &mut String, name: &str, m: &GroupMetrics, score: &str) {
    let c = &m.confusion;
    let auc = m.roc_auc.map_or("-".to_string(), pct);
    let _ = writeln!(
        out,
        "{name:<14} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        m.n,
        c.tp + c.fn_,
        c.tp,
        c.fp,
        c.fn_,
        c.tn,
        pct(m.precision),
        pct(m.recall),
        pct(m.f1),
        pct(m.accuracy),
        auc,
        score
    );
}

/// A fixed-width table: one row per policy, then pooled, then the macro score.
fn table(report: &MetricsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "policy", "n", "unsafe", "TP", "FP", "FN", "TN", "P", "R", "F1", "Acc", "AUC", "score"
    );
    for (name, m) in &report.per_policy {
        let mark = if m.confusion.tp + m.confusion.fn_ == 0 {
            "*"
        } else {
            ""
        };
        row(&mut out, name, m, &format!("{}{mark}", pct(m.score)));
    }
    row(&mut out, "(pooled)", &report.pooled, "");
    let _ = writeln!(
        out,
        "\nmacro score (mean of per-policy scores): {}",
        pct(report.macro_score)
    );
    if report
        .per_policy
        .values()
        .any(|m| m.confusion.tp + m.confusion.fn_ == 0)
    {
        let _ = writeln!(
            out,
            "* no unsafe label under this policy: score is accuracy"
        );
    }
    if let Some(b) = &report.bootstrap {
        let _ = writeln!(
            out,
            "bootstrap ({} resamples, seed {}, {:.0}%): macro [{}, {}], pooled F1 [{}, {}]",
            b.resamples,
            b.seed,
            100.0 * b.level,
            pct(b.macro_score[0]),
            pct(b.macro_score[1]),
            pct(b.pooled_f1[0]),
            pct(b.pooled_f1[1])
        );
    }
    out
}
