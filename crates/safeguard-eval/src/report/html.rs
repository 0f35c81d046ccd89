//! The report as one self-contained HTML page: inline CSS, inline SVG charts, thumbnails as
//! `data:` URLs. Nothing on the page refers to another file or to the network.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use safeguard_core::metrics::GroupMetrics;

use super::charts::{self, hex, run_color};
use super::paper::{self, QuotedRow};
use super::run::{MetricsSource, Run};
use super::table::{duration, pct, quoted, short_time, ScoreTable};
use super::{truncate_text, worst_errors, ReportOptions};

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root { --ink:#1f2328; --muted:#57606a; --line:#d8dee4; --soft:#f6f8fa; --accent:#0b5cad;
        --ok:#1a7f37; --bad:#cf222e; --quote:#7a5c00; }
* { box-sizing: border-box; }
body { margin:0; background:#eef1f5; color:var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
header.page { background:#0f2a44; color:#fff; padding: 22px 28px; }
header.page h1 { margin:0 0 4px; font-size: 24px; font-weight:650; }
header.page p { margin:0; color:#c9d6e3; font-size:14px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding: 18px 22px;
          margin: 18px 0; }
h2 { font-size: 19px; margin: 0 0 4px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
p.lead { color: var(--muted); margin: 0 0 12px; font-size: 14px; }
.runs { display:grid; grid-template-columns: repeat(auto-fill, minmax(255px, 1fr)); gap: 14px; }
.run-card { border:1px solid var(--line); border-radius:8px; padding: 12px 14px; border-top: 5px solid var(--c); }
.run-card h3 { margin: 0 0 8px; word-break: break-word; }
dl.meta { display:grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin:0; font-size: 13.5px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin:0; word-break: break-word; }
.swatch { display:inline-block; width:12px; height:12px; border-radius:3px; background:var(--c);
          margin-right:6px; vertical-align: -1px; }
.note { background:#fff8c5; border:1px solid #eedc82; border-radius:6px; padding:6px 10px;
        margin-top:8px; font-size:13px; }
table.scores { border-collapse: collapse; width:100%; font-variant-numeric: tabular-nums; font-size:14px; }
table.scores th, table.scores td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align:right; white-space:nowrap; }
table.scores th:first-child, table.scores td:first-child { text-align:left; white-space:normal; }
table.scores thead th { background: var(--soft); font-weight:600; border-bottom: 2px solid var(--line); }
table.scores td.best { font-weight:700; }
table.scores td.sep, table.scores th.sep { border-left: 2px solid var(--line); }
tbody.quoted td { font-style: italic; color: var(--quote); background:#fffbeb; }
tbody.quoted tr.quoted-head td { font-style: normal; font-weight:600; font-size:12.5px; text-align:left;
        background:#fdf1c7; color:#5c4400; letter-spacing: .02em; }
.tag { font-style:normal; font-size:11px; border:1px solid #d4a72c; color:#7a5c00; border-radius:10px;
       padding:0 6px; margin-left:6px; white-space:nowrap; }
.footnote { color: var(--muted); font-size: 12.5px; margin: 8px 0 0; }
svg.chart { display:block; width:100%; height:auto; max-width: 960px; margin: 6px auto 0; }
.legend { display:flex; flex-wrap:wrap; gap: 6px 18px; font-size: 13px; margin-top:6px; }
.cms { display:flex; flex-wrap:wrap; gap: 12px; margin-bottom: 10px; }
table.cm { border-collapse: collapse; font-size: 12.5px; font-variant-numeric: tabular-nums; }
table.cm caption { font-weight:600; font-size:13px; text-align:left; padding-bottom:3px; }
table.cm th.corner { font-size:10px; }
table.cm th { font-weight:500; color: var(--muted); padding: 2px 6px; text-align:right; }
table.cm td { width: 62px; height: 40px; text-align:center; border:1px solid #fff; font-weight:600; }
table.cm td small { display:block; font-weight:400; font-size:10.5px; color: var(--muted); }
table.heat td { text-align:center; }
.gallery { display:grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.card { border:1px solid var(--line); border-radius:8px; overflow:hidden; background:#fff; font-size:12.5px; }
.card .img { height: 140px; background: var(--soft); display:flex; align-items:center; justify-content:center;
             color: var(--muted); font-size: 12px; }
.card img { width:100%; height:140px; object-fit: cover; display:block; }
.card .body { padding: 8px 10px; }
.card .id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12px; word-break: break-all; }
.verdict { display:inline-block; border-radius: 4px; padding: 0 5px; font-weight:600; font-size:11.5px; }
.v-safe { background:#dafbe1; color:#116329; } .v-unsafe { background:#ffebe9; color:#a40e26; }
.v-none { background:#eaeef2; color:var(--muted); }
.card .why { color: var(--muted); margin-top: 4px; }
details { margin-top: 8px; } summary { cursor: pointer; color: var(--accent); font-size: 14px; }
footer { color: var(--muted); font-size: 12.5px; text-align:center; margin-top: 24px; }
"#;

/// Renders `runs` as one self-contained HTML page.
pub fn render_html(runs: &[Run], options: &ReportOptions) -> String {
    let table = ScoreTable::of(runs);
    let mut out = String::new();
    let title = escape(&options.title());
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <header class=\"page\"><h1>{title}</h1><p>{} run{} · {} polic{} · unsafe is the positive class · scores in percent</p></header>\n<main>\n",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        table.policies.len(),
        if table.policies.len() == 1 { "y" } else { "ies" },
    );
    run_cards(&mut out, runs);
    scores_section(&mut out, &table, options);
    bars_section(&mut out, &table);
    heatmap_section(&mut out, &table, options);
    scores_distribution_section(&mut out, runs);
    confusion_section(&mut out, runs);
    breakdown_section(&mut out, runs);
    if options.gallery > 0 {
        gallery_section(&mut out, runs, options.gallery);
    }
    let _ = write!(
        out,
        "<footer>Generated by <code>safeguard report</code>. Metrics are computed from each run's predictions.jsonl \
         (safeguard-core metrics); unassessed items are excluded from them.</footer>\n</main>\n</body>\n</html>\n"
    );
    out
}

fn dd(out: &mut String, term: &str, value: Option<String>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(term), escape(&v));
    }
}

fn run_cards(out: &mut String, runs: &[Run]) {
    let _ = write!(
        out,
        "<section id=\"runs\"><h2>Runs</h2><p class=\"lead\">What was run, on what, and how it went.</p><div class=\"runs\">"
    );
    for (i, run) in runs.iter().enumerate() {
        let m = &run.meta;
        let _ = write!(
            out,
            "<div class=\"run-card\" style=\"--c:{}\"><h3><span class=\"swatch\"></span>{}</h3><dl class=\"meta\">",
            hex(run_color(i)),
            escape(&run.name())
        );
        let dataset = [
            m.dataset.name.clone(),
            m.dataset.format.clone().map(|f| format!("({f})")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        dd(out, "dataset", Some(dataset));
        dd(out, "path", m.dataset.path.clone());
        dd(out, "backend", m.backend.clone());
        dd(out, "model", m.model.clone());
        dd(out, "mode", m.mode.clone());
        dd(out, "threshold", m.threshold.map(|t| t.to_string()));
        dd(out, "started", m.started.as_deref().map(short_time));
        dd(
            out,
            "finished",
            Some(
                m.finished
                    .as_deref()
                    .map_or("not finished".to_string(), short_time),
            )
            .filter(|_| m.started.is_some() || m.finished.is_some()),
        );
        dd(out, "time", m.elapsed_s.map(duration));
        let items = match m.dataset.items {
            Some(total) => format!("{} of {}", run.rows.len(), total),
            None => run.rows.len().to_string(),
        };
        dd(out, "items", Some(items));
        dd(
            out,
            "unassessed",
            Some(format!("{} ({} errors)", run.unassessed, run.errors)),
        );
        if !m.policies.is_empty() {
            let policies: Vec<String> = m
                .policies
                .iter()
                .map(|(name, p)| match &p.hash {
                    Some(h) => {
                        format!("<span title=\"hash {}\">{}</span>", escape(h), escape(name))
                    }
                    None => escape(name),
                })
                .collect();
            let _ = write!(out, "<dt>policies</dt><dd>{}</dd>", policies.join(", "));
        }
        dd(out, "code", m.code_version.clone());
        let machine = [
            m.machine.os.clone(),
            m.machine.cpu.clone(),
            m.machine.cores.map(|c| format!("{c} cores")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        dd(out, "machine", Some(machine));
        if run.metrics_source == MetricsSource::Summary {
            dd(out, "metrics", Some("from summary.json".into()));
        }
        let _ = write!(out, "</dl>");
        for note in &run.notes {
            let _ = write!(out, "<div class=\"note\">{}</div>", escape(note));
        }
        let _ = write!(out, "</div>");
    }
    let _ = writeln!(out, "</div></section>");
}

fn scores_section(out: &mut String, table: &ScoreTable, options: &ReportOptions) {
    let _ = write!(
        out,
        "<section id=\"scores\"><h2>Scores per policy</h2><p class=\"lead\">The paper's Table 6 layout. \
         Score = F1 with unsafe positive, or accuracy for a policy with no unsafe label; macro = mean of the \
         per-policy scores; pooled = over all assessed items. Best of our runs in bold.</p>\
         <table class=\"scores\"><thead><tr><th>run</th>"
    );
    for p in &table.policies {
        let _ = write!(out, "<th>{}</th>", escape(p));
    }
    let _ = write!(
        out,
        "<th class=\"sep\">macro</th><th>pooled F1</th><th>pooled acc.</th><th>n</th></tr></thead><tbody class=\"ours\">"
    );
    let best = table.best();
    let np = table.policies.len();
    for (r, row) in table.rows.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td><span class=\"swatch\" style=\"--c:{}\"></span>{}</td>",
            hex(run_color(r)),
            escape(&row.name)
        );
        let cls = |col: usize, extra: &str| {
            let mut c = extra.to_string();
            if best[col] == Some(r) {
                c.push_str(" best");
            }
            c
        };
        for (p, s) in row.scores.iter().enumerate() {
            let _ = write!(
                out,
                "<td class=\"{}\">{}</td>",
                cls(p, ""),
                s.map_or("–".into(), pct)
            );
        }
        let _ = write!(
            out,
            "<td class=\"{}\">{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            cls(np, "sep"),
            pct(row.macro_score),
            cls(np + 1, ""),
            pct(row.pooled_f1),
            cls(np + 2, ""),
            pct(row.pooled_accuracy),
            row.n
        );
    }
    let _ = write!(out, "</tbody>");
    if options.quote_paper {
        let _ = write!(
            out,
            "<tbody class=\"quoted\"><tr class=\"quoted-head\"><td colspan=\"{}\">Quoted from the paper, Table 6 \
             (SafeEditBench) — not computed by us; macro column = the paper's “Overall”</td></tr>",
            np + 5
        );
        for q in paper::TABLE6 {
            let _ = write!(
                out,
                "<tr><td>{}<span class=\"tag\">quoted from the paper</span></td>",
                escape(q.name)
            );
            for p in &table.policies {
                let _ = write!(
                    out,
                    "<td>{}</td>",
                    paper::score(q, p).map_or("–".into(), quoted)
                );
            }
            let _ = write!(
                out,
                "<td class=\"sep\">{}</td><td>–</td><td>–</td><td>–</td></tr>",
                q.overall.map_or("–".into(), quoted)
            );
        }
        let _ = write!(out, "</tbody>");
    }
    let _ = write!(out, "</table>");
    if options.quote_paper {
        let _ = write!(
            out,
            "<p class=\"footnote\">Quoted rows are percentages printed in the paper (REFERENCE.md) for its \
             SafeEditBench policies L1–L5; they are shown for orientation only and take no part in any number \
             of our runs. The paper's Overall is not always the mean of its five numbers.</p>"
        );
    }
    let _ = writeln!(out, "</section>");
}

fn legend(out: &mut String, names: &[String]) {
    let _ = write!(out, "<div class=\"legend\">");
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            out,
            "<span><span class=\"swatch\" style=\"--c:{}\"></span>{}</span>",
            hex(run_color(i)),
            escape(name)
        );
    }
    let _ = write!(out, "</div>");
}

fn chart_or_note(out: &mut String, chart: Result<String, String>) {
    match chart {
        Ok(svg) => out.push_str(&svg),
        Err(e) => {
            let _ = write!(
                out,
                "<div class=\"note\">chart could not be drawn: {}</div>",
                escape(&e)
            );
        }
    }
}

fn bars_section(out: &mut String, table: &ScoreTable) {
    let names: Vec<String> = table.rows.iter().map(|r| r.name.clone()).collect();
    let _ = write!(
        out,
        "<section id=\"bars\"><h2>Score per policy</h2><p class=\"lead\">One bar per run; \
         policies from most permissive to most restrictive when named L1…L5.</p>"
    );
    chart_or_note(out, charts::score_bars(table, &names));
    if names.len() > 6 {
        legend(out, &names);
    }
    let _ = writeln!(out, "</section>");
}

fn heatmap_section(out: &mut String, table: &ScoreTable, options: &ReportOptions) {
    let _ = write!(
        out,
        "<section id=\"matrix\"><h2>Cross-policy matrix</h2><p class=\"lead\">Rows = runs, columns = evaluation \
         policies, cell = score (%). With runs trained under different policies this is the paper's Table 3 \
         layout.</p>"
    );
    chart_or_note(out, charts::heatmap(table));
    if options.quote_paper {
        let _ = write!(
            out,
            "<h3>Quoted from the paper: Table 3 <span class=\"tag\">quoted from the paper</span></h3>\
             <table class=\"scores heat\"><thead><tr><th>trained on</th>"
        );
        for p in paper::POLICIES {
            let _ = write!(out, "<th>{p}</th>");
        }
        let _ = write!(out, "</tr></thead><tbody class=\"quoted\">");
        for q in paper::TABLE3 {
            quoted_heat_row(out, q);
        }
        let _ = write!(
            out,
            "</tbody></table><p class=\"footnote\">Cross-policy generalisation as printed in the paper \
             (train on one level, evaluate on all five); not computed by us.</p>"
        );
    }
    let _ = writeln!(out, "</section>");
}

fn quoted_heat_row(out: &mut String, q: &QuotedRow) {
    let _ = write!(out, "<tr><td>{}</td>", escape(q.name));
    for s in q.scores {
        let f = s / 100.0;
        let _ = write!(
            out,
            "<td style=\"background:{};color:{}\">{}</td>",
            hex(charts::heat_color(f)),
            hex(charts::heat_text_color(f)),
            quoted(s)
        );
    }
    let _ = write!(out, "</tr>");
}

fn scores_distribution_section(out: &mut String, runs: &[Run]) {
    let _ = write!(
        out,
        "<section id=\"calibration\"><h2>Scores and calibration</h2><p class=\"lead\">Distribution of \
         p_unsafe per true label (the line is the run's threshold) and reliability: the unsafe fraction of the \
         items in each score bin against their mean score; on the diagonal = calibrated, dot size = items.</p>"
    );
    let mut any = false;
    for (i, run) in runs.iter().enumerate() {
        if run.scored_rows().next().is_none() {
            continue;
        }
        any = true;
        let _ = write!(
            out,
            "<h3><span class=\"swatch\" style=\"--c:{}\"></span>{}</h3>",
            hex(run_color(i)),
            escape(&run.name())
        );
        chart_or_note(out, charts::score_panels(run, run_color(i)));
    }
    if !any {
        let _ = write!(out, "<p class=\"footnote\">No run has p_unsafe scores.</p>");
    }
    let _ = writeln!(out, "</section>");
}

fn cm_cell(out: &mut String, count: u64, n: u64, correct: bool, what: &str) {
    let share = if n == 0 { 0.0 } else { count as f64 / n as f64 };
    let alpha = 0.08 + 0.6 * share;
    let (r, g, b) = if correct {
        (26, 127, 55)
    } else {
        (207, 34, 46)
    };
    let _ = write!(
        out,
        "<td style=\"background:rgba({r},{g},{b},{alpha:.2})\" title=\"{what}\">{count}<small>{what}</small></td>"
    );
}

fn confusion_section(out: &mut String, runs: &[Run]) {
    let _ = write!(
        out,
        "<section id=\"confusion\"><h2>Confusion matrices</h2><p class=\"lead\">Per policy; rows = true label, \
         columns = verdict. Green = right, red = wrong; shade = share of the policy's items.</p>"
    );
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(
            out,
            "<h3><span class=\"swatch\" style=\"--c:{}\"></span>{}</h3><div class=\"cms\">",
            hex(run_color(i)),
            escape(&run.name())
        );
        let mut policies: Vec<&String> = run.metrics.per_policy.keys().collect();
        policies.sort_by(|a, b| super::table::natural_cmp(a, b));
        for policy in policies {
            let m = &run.metrics.per_policy[policy];
            let c = &m.confusion;
            let _ = write!(
                out,
                "<table class=\"cm\"><caption>{} · n={} · score {}</caption>\
                 <tr><th class=\"corner\">label ╲ verdict</th><th>safe</th><th>unsafe</th></tr><tr><th>safe</th>",
                escape(policy),
                m.n,
                pct(m.score)
            );
            cm_cell(out, c.tn, m.n, true, "TN");
            cm_cell(out, c.fp, m.n, false, "FP");
            let _ = write!(out, "</tr><tr><th>unsafe</th>");
            cm_cell(out, c.fn_, m.n, false, "FN");
            cm_cell(out, c.tp, m.n, true, "TP");
            let _ = write!(out, "</tr></table>");
        }
        let _ = write!(out, "</div>");
    }
    let _ = writeln!(out, "</section>");
}

fn group_table(out: &mut String, title: &str, groups: &BTreeMap<String, GroupMetrics>) {
    let _ = write!(
        out,
        "<h3>{}</h3><table class=\"scores\"><thead><tr><th>group</th><th>n</th><th>TP</th><th>FP</th>\
         <th>FN</th><th>TN</th><th>precision</th><th>recall</th><th>F1</th><th>accuracy</th><th>score</th></tr></thead><tbody>",
        escape(title)
    );
    for (name, m) in groups {
        let c = &m.confusion;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            m.n,
            c.tp,
            c.fp,
            c.fn_,
            c.tn,
            pct(m.precision),
            pct(m.recall),
            pct(m.f1),
            pct(m.accuracy),
            pct(m.score)
        );
    }
    let _ = write!(out, "</tbody></table>");
}

fn breakdown_section(out: &mut String, runs: &[Run]) {
    let any = runs
        .iter()
        .any(|r| !r.per_category.is_empty() || !r.per_source.is_empty() || r.pairs.is_some());
    if !any {
        return;
    }
    let _ = write!(
        out,
        "<section id=\"breakdown\"><h2>Breakdown</h2><p class=\"lead\">Per dataset category and source, and \
         edited pairs (an unsafe image and its safe edit under one policy: both judged right).</p>"
    );
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(
            out,
            "<details{}><summary><span class=\"swatch\" style=\"--c:{}\"></span>{}",
            if i == 0 { " open" } else { "" },
            hex(run_color(i)),
            escape(&run.name())
        );
        if let Some(p) = run.pairs {
            let _ = write!(
                out,
                " — pairs: {} of {} both right ({}%)",
                p.both_correct,
                p.n,
                pct(p.accuracy)
            );
        }
        let _ = write!(out, "</summary>");
        if !run.per_category.is_empty() {
            group_table(out, "Per category", &run.per_category);
        }
        if !run.per_source.is_empty() {
            group_table(out, "Per source", &run.per_source);
        }
        let _ = write!(out, "</details>");
    }
    let _ = writeln!(out, "</section>");
}

fn verdict_badge(v: Option<safeguard_core::Verdict>) -> String {
    match v {
        Some(v) => format!("<span class=\"verdict v-{v}\">{v}</span>"),
        None => "<span class=\"verdict v-none\">unassessed</span>".to_string(),
    }
}

fn gallery_section(out: &mut String, runs: &[Run], limit: usize) {
    let _ = write!(
        out,
        "<section id=\"errors\"><h2>Worst errors</h2><p class=\"lead\">Wrong verdicts, most confident first \
         (confidence = p_unsafe for an unsafe verdict, 1 − p_unsafe for a safe one; unscored errors last). \
         At most {limit} per run.</p>"
    );
    for (i, run) in runs.iter().enumerate() {
        let worst = worst_errors(run, limit);
        let wrong_total = run.rows.iter().filter(|r| r.is_wrong()).count();
        let _ = write!(
            out,
            "<h3><span class=\"swatch\" style=\"--c:{}\"></span>{} <small>({} wrong)</small></h3>",
            hex(run_color(i)),
            escape(&run.name()),
            wrong_total
        );
        if worst.is_empty() {
            let _ = write!(out, "<p class=\"footnote\">No wrong verdict.</p>");
            continue;
        }
        let _ = write!(out, "<div class=\"gallery\">");
        for row in worst {
            let image = row.thumb.as_deref().and_then(|t| run.thumbs.get(t)).map_or(
                "<div class=\"img\">no thumbnail</div>".to_string(),
                |url| {
                    format!(
                        "<img src=\"{}\" alt=\"{}\" loading=\"lazy\">",
                        escape(url),
                        escape(&row.id)
                    )
                },
            );
            let why = row
                .rationale
                .as_deref()
                .or(row.output.as_deref())
                .map(|t| truncate_text(t, 180))
                .unwrap_or_default();
            let _ = write!(
                out,
                "<div class=\"card\">{image}<div class=\"body\"><div class=\"id\">{}</div>\
                 <div>{} · label {} → {}</div><div>p_unsafe {}</div>",
                escape(&row.id),
                escape(&row.policy),
                verdict_badge(Some(row.label)),
                verdict_badge(row.pred),
                row.p_unsafe.map_or("–".into(), |p| format!("{p:.3}")),
            );
            if !row.rules_hit.is_empty() {
                let _ = write!(
                    out,
                    "<div>rules: {}</div>",
                    escape(&row.rules_hit.join(", "))
                );
            }
            if !why.is_empty() {
                let _ = write!(out, "<div class=\"why\">{}</div>", escape(&why));
            }
            let _ = write!(out, "</div></div>");
        }
        let _ = write!(out, "</div>");
    }
    let _ = writeln!(out, "</section>");
}
