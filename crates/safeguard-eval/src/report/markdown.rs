//! The report as Markdown tables (no plots), for pasting into issues and pull requests.

use std::fmt::Write as _;

use super::paper::{self, QuotedRow};
use super::run::Run;
use super::table::{duration, pct, quoted, short_time, ScoreTable};
use super::{worst_errors, ReportOptions};

/// Escapes the characters that would break a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

fn or_dash(v: Option<String>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or_else(|| "–".into())
}

/// Renders `runs` as Markdown: run details, the score table (Table 6 layout), confusion counts
/// per policy, edited pairs, and the worst errors; with `quote_paper`, the paper's Table 6 and
/// Table 3 rows in separate, labelled tables.
pub fn render_markdown(runs: &[Run], options: &ReportOptions) -> String {
    let mut out = String::new();
    let table = ScoreTable::of(runs);
    let _ = writeln!(out, "# {}\n", cell(&options.title()));

    let _ = writeln!(out, "## Runs\n");
    let _ = writeln!(
        out,
        "| run | dataset | backend / model | mode | threshold | started | time | items | unassessed | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---|---:|---:|---:|---:|");
    for run in runs {
        let m = &run.meta;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&run.name()),
            cell(&or_dash(m.dataset.name.clone().or(m.dataset.path.clone()))),
            cell(&backend_model(run)),
            cell(&or_dash(m.mode.clone())),
            or_dash(m.threshold.map(|t| t.to_string())),
            cell(&or_dash(m.started.as_deref().map(short_time))),
            or_dash(m.elapsed_s.map(duration)),
            run.rows.len(),
            run.unassessed,
            run.errors
        );
    }
    for run in runs.iter().filter(|r| !r.notes.is_empty()) {
        for note in &run.notes {
            let _ = writeln!(out, "\n> **{}**: {}", cell(&run.name()), cell(note));
        }
    }

    let _ = writeln!(
        out,
        "\n## Scores per policy\n\nScore = F1 with unsafe positive, or accuracy for a policy with no unsafe label; macro = mean of the per-policy scores; pooled = over all assessed items. Percent.\n"
    );
    let header: Vec<String> = table.policies.iter().map(|p| cell(p)).collect();
    let _ = writeln!(
        out,
        "| run | {} | macro | pooled F1 | pooled acc. |",
        header.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|{}---:|---:|---:|",
        "---:|".repeat(table.policies.len())
    );
    for row in &table.rows {
        let scores: Vec<String> = row
            .scores
            .iter()
            .map(|s| s.map_or("–".into(), pct))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&row.name),
            scores.join(" | "),
            pct(row.macro_score),
            pct(row.pooled_f1),
            pct(row.pooled_accuracy)
        );
    }

    if options.quote_paper {
        quoted_table(
            &mut out,
            "Quoted from the paper: Table 6 (SafeEditBench, other guards)",
            "The paper's *Overall*, which is not always the mean of its five numbers. Not computed by us.",
            paper::TABLE6,
            true,
        );
        quoted_table(
            &mut out,
            "Quoted from the paper: Table 3 (cross-policy: trained on one level, evaluated on all)",
            "Not computed by us.",
            paper::TABLE3,
            false,
        );
    }

    let _ = writeln!(out, "\n## Confusion counts\n");
    let _ = writeln!(
        out,
        "| run | policy | n | TP | FP | FN | TN | precision | recall | F1 | accuracy | ROC-AUC |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        for (policy, m) in &run.metrics.per_policy {
            let c = &m.confusion;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&run.name()),
                cell(policy),
                m.n,
                c.tp,
                c.fp,
                c.fn_,
                c.tn,
                pct(m.precision),
                pct(m.recall),
                pct(m.f1),
                pct(m.accuracy),
                m.roc_auc.map_or("–".into(), pct)
            );
        }
    }

    if runs.iter().any(|r| r.pairs.is_some()) {
        let _ = writeln!(
            out,
            "\n## Edited pairs\n\nBoth images of a pair (an unsafe image and its safe edit, same policy) judged right.\n"
        );
        let _ = writeln!(out, "| run | pairs | both right | accuracy |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for run in runs {
            if let Some(p) = run.pairs {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    cell(&run.name()),
                    p.n,
                    p.both_correct,
                    pct(p.accuracy)
                );
            }
        }
    }

    if options.gallery > 0 {
        let _ = writeln!(
            out,
            "\n## Worst errors\n\nWrong verdicts, most confident first (confidence = p_unsafe for an unsafe verdict, 1 − p_unsafe for a safe one).\n"
        );
        let _ = writeln!(
            out,
            "| run | id | policy | label | pred | p_unsafe | rationale |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---:|---|");
        for run in runs {
            for row in worst_errors(run, options.gallery) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    cell(&run.name()),
                    cell(&row.id),
                    cell(&row.policy),
                    row.label,
                    row.pred.map_or("–", |p| p.as_str()),
                    row.p_unsafe.map_or("–".into(), |p| format!("{p:.3}")),
                    cell(&super::truncate_text(
                        row.rationale
                            .as_deref()
                            .or(row.output.as_deref())
                            .unwrap_or(""),
                        120
                    ))
                );
            }
        }
    }
    out
}

fn backend_model(run: &Run) -> String {
    match (&run.meta.backend, &run.meta.model) {
        (Some(b), Some(m)) => format!("{b} / {m}"),
        (Some(b), None) => b.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => "–".into(),
    }
}

fn quoted_table(out: &mut String, title: &str, note: &str, rows: &[QuotedRow], overall: bool) {
    let _ = writeln!(out, "\n### {title}\n\n_{note}_\n");
    let extra = if overall { " Overall |" } else { "" };
    let _ = writeln!(
        out,
        "| guard (quoted) | {} |{extra}",
        paper::POLICIES.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|{}{}",
        "---:|".repeat(paper::POLICIES.len()),
        if overall { "---:|" } else { "" }
    );
    for row in rows {
        let scores: Vec<String> = row
            .scores
            .iter()
            .map(|s| format!("_{}_", quoted(*s)))
            .collect();
        let overall_cell = match (overall, row.overall) {
            (true, Some(o)) => format!(" _{}_ |", quoted(o)),
            (true, None) => " – |".into(),
            (false, _) => String::new(),
        };
        let _ = writeln!(
            out,
            "| _{}_ | {} |{overall_cell}",
            cell(row.name),
            scores.join(" | ")
        );
    }
}
