//! `report`: loading run directories and rendering HTML / Markdown reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safeguard_core::metrics::{self, MetricsReport};
use safeguard_core::predictions::Prediction;
use safeguard_core::Verdict;
use safeguard_eval::report::sample::{write_run, SampleRun};
use safeguard_eval::report::{self, load_run, render_html, render_markdown, ReportOptions, Run};

fn sample(name: &str, seed: u64) -> SampleRun {
    SampleRun {
        name: name.to_string(),
        seed,
        ..SampleRun::default()
    }
}

/// Three runs: scored with summary, trained-on-L5 with thumbnails, and one without scores,
/// thumbnails or summary.
fn three_runs(root: &Path) -> Vec<Run> {
    let specs = [
        sample("alpha <scored>", 1),
        SampleRun {
            trained_on: Some("L5".into()),
            ..sample("beta trained on L5", 2)
        },
        SampleRun {
            scores: false,
            thumbs: false,
            summary: false,
            ..sample("gamma | reason mode", 3)
        },
    ];
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let dir = root.join(format!("run{i}"));
            write_run(&dir, s).unwrap();
            load_run(&dir).unwrap()
        })
        .collect()
}

/// The metrics of a predictions file computed independently of the report code: rows with
/// `pred: null` are left out, the rest go through `safeguard_core::metrics::compute`.
fn expected_metrics(dir: &Path) -> (MetricsReport, usize) {
    let text = std::fs::read_to_string(dir.join("predictions.jsonl")).unwrap();
    let mut rows = Vec::new();
    let mut unassessed = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["pred"].is_null() {
            unassessed += 1;
            continue;
        }
        let verdict = |k: &str| Verdict::from_label(v[k].as_str().unwrap()).unwrap();
        rows.push(Prediction {
            id: v["id"].as_str().unwrap().into(),
            policy: v["policy"].as_str().unwrap().into(),
            label: verdict("label"),
            pred: verdict("pred"),
            p_unsafe: v["p_unsafe"].as_f64(),
            output: None,
            latency_ms: None,
        });
    }
    (metrics::compute(&rows), unassessed)
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// The `<tr>` of the scores table whose first cell holds `name` (HTML-escaped).
fn score_row<'a>(html: &'a str, name: &str) -> &'a str {
    let ours = &html[html.find("<tbody class=\"ours\">").unwrap()..];
    let ours = &ours[..ours.find("</tbody>").unwrap()];
    let at = ours
        .find(name)
        .unwrap_or_else(|| panic!("{name} in {ours}"));
    let start = ours[..at].rfind("<tr>").unwrap();
    let end = at + ours[at..].find("</tr>").unwrap();
    &ours[start..end]
}

fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|c| {
            let inner = &c[c.find('>').unwrap() + 1..];
            inner[..inner.find("</td>").unwrap_or(inner.len())].to_string()
        })
        .collect()
}

#[test]
fn html_shows_every_run_and_policy_with_the_numbers_of_core_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = three_runs(tmp.path());
    let html = render_html(&runs, &ReportOptions::default());
    for policy in ["L1", "L2", "L3", "L4", "L5"] {
        assert!(html.contains(&format!("<th>{policy}</th>")), "{policy}");
    }
    for (i, run) in runs.iter().enumerate() {
        let escaped = [
            "alpha &lt;scored&gt;",
            "beta trained on L5",
            "gamma | reason mode",
        ][i];
        assert!(html.contains(escaped), "run {i} missing");
        let (want, _) = expected_metrics(&run.dir);
        let got = cells(score_row(&html, escaped));
        // run, L1..L5, macro, pooled F1, pooled accuracy, n
        assert_eq!(got.len(), 10, "{got:?}");
        for (k, policy) in ["L1", "L2", "L3", "L4", "L5"].iter().enumerate() {
            assert_eq!(got[1 + k], pct(want.per_policy[*policy].score), "{policy}");
        }
        assert_eq!(got[6], pct(want.macro_score));
        assert_eq!(got[7], pct(want.pooled.f1));
        assert_eq!(got[8], pct(want.pooled.accuracy));
        assert_eq!(got[9], want.pooled.n.to_string());
    }
}

#[test]
fn run_without_summary_gets_metrics_from_its_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_run(
        &dir,
        &SampleRun {
            summary: false,
            unassessed: 0.2,
            ..sample("no summary", 9)
        },
    )
    .unwrap();
    assert!(!dir.join("summary.json").exists());
    let run = load_run(&dir).unwrap();
    let (want, unassessed) = expected_metrics(&dir);
    assert!(unassessed > 0);
    assert_eq!(run.metrics, want);
    assert_eq!(run.unassessed, unassessed as u64);
    assert!(run.errors > 0 && run.errors <= run.unassessed);
    assert_eq!(run.metrics.pooled.n + run.unassessed, run.rows.len() as u64);
    assert!(run.pairs.is_some() && !run.per_category.is_empty());
}

#[test]
fn summary_that_disagrees_with_the_predictions_is_noted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_run(&dir, &sample("stale", 4)).unwrap();
    assert!(load_run(&dir).unwrap().notes.is_empty());
    let path = dir.join("summary.json");
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    summary["macro"] = serde_json::json!(0.123);
    std::fs::write(&path, summary.to_string()).unwrap();
    let run = load_run(&dir).unwrap();
    assert_eq!(run.metrics, expected_metrics(&dir).0);
    assert!(
        run.notes.iter().any(|n| n.contains("summary.json macro")),
        "{:?}",
        run.notes
    );
    assert!(render_html(&[run], &ReportOptions::default()).contains("summary.json macro"));
}

#[test]
fn every_chart_is_an_inline_svg() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = three_runs(tmp.path());
    let html = render_html(&runs, &ReportOptions::default());
    let count = |s: &str| html.matches(s).count();
    // Bars + matrix + one score panel per run with p_unsafe (two of three).
    assert_eq!(count("<svg "), 4);
    assert_eq!(count("</svg>"), 4);
    assert_eq!(count("aria-label=\"score per policy and run\""), 1);
    assert_eq!(count("aria-label=\"cross-policy score matrix\""), 1);
    assert_eq!(count("aria-label=\"score distribution of "), 2);
    assert!(count("<rect") > 50, "bars and cells are rectangles");
    // One 2×2 confusion matrix per run and policy.
    assert_eq!(count("<table class=\"cm\">"), 3 * 5);
}

#[test]
fn html_is_self_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = three_runs(tmp.path());
    for quote_paper in [false, true] {
        let html = render_html(
            &runs,
            &ReportOptions {
                quote_paper,
                ..ReportOptions::default()
            },
        );
        for needle in ["http://", "https://", "<link", "<script", "@import", "url("] {
            assert!(!html.contains(needle), "found {needle}");
        }
        for src in html.split("src=\"").skip(1) {
            assert!(src.starts_with("data:image/"), "{}", &src[..40]);
        }
        assert!(html.contains("src=\"data:image/jpeg;base64,"));
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    }
}

#[test]
fn quoted_paper_rows_are_marked_and_change_none_of_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = three_runs(tmp.path());
    let plain = render_html(&runs, &ReportOptions::default());
    let quoted = render_html(
        &runs,
        &ReportOptions {
            quote_paper: true,
            ..ReportOptions::default()
        },
    );
    assert!(!plain.contains("quoted from the paper") && !plain.contains("LlavaGuard-7B"));
    let q = &quoted[quoted.find("<tbody class=\"quoted\">").unwrap()..];
    let q = &q[..q.find("</tbody>").unwrap()];
    for row in report::paper::TABLE6 {
        assert!(q.contains(row.name), "{}", row.name);
    }
    assert!(q.contains("<td>49.15</td>") && q.contains("<td class=\"sep\">44.16</td>"));
    assert!(quoted.contains("Quoted from the paper: Table 3") && quoted.contains("84.35"));
    let ours = |html: &str| {
        let t = &html[html.find("<tbody class=\"ours\">").unwrap()..];
        t[..t.find("</tbody>").unwrap()].to_string()
    };
    assert_eq!(ours(&plain), ours(&quoted));
    // The charts show our runs only.
    let svgs = |html: &str| {
        html.split("<svg ")
            .skip(1)
            .map(|s| s[..s.find("</svg>").unwrap()].to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(svgs(&plain), svgs(&quoted));
}

/// Cells of a Markdown table row: split on `|` not preceded by a backslash.
fn md_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '|' => cells.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    cells.push(cur);
    // Leading and trailing pipes leave empty ends.
    cells[1..cells.len() - 1]
        .iter()
        .map(|c| c.trim().to_string())
        .collect()
}

/// The table that follows the heading `heading`.
fn md_table<'a>(md: &'a str, heading: &str) -> Vec<&'a str> {
    let after = &md[md.find(heading).unwrap_or_else(|| panic!("{heading}"))..];
    after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect()
}

#[test]
fn markdown_has_the_same_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = three_runs(tmp.path());
    let md = render_markdown(&runs, &ReportOptions::default());
    assert!(!md.contains("<svg") && !md.contains("quoted"));
    let table = md_table(&md, "## Scores per policy");
    assert_eq!(table.len(), 2 + runs.len());
    let header = md_cells(table[0]);
    assert_eq!(
        header,
        [
            "run",
            "L1",
            "L2",
            "L3",
            "L4",
            "L5",
            "macro",
            "pooled F1",
            "pooled acc."
        ]
    );
    assert!(md_cells(table[1]).iter().all(|c| c.starts_with("---")));
    for (line, run) in table[2..].iter().zip(&runs) {
        let cells = md_cells(line);
        assert_eq!(cells.len(), header.len(), "{line}");
        let (want, _) = expected_metrics(&run.dir);
        assert_eq!(cells[1], pct(want.per_policy["L1"].score));
        assert_eq!(cells[6], pct(want.macro_score));
        assert_eq!(cells[7], pct(want.pooled.f1));
    }
    // The pipe in a run name is escaped, not a column.
    assert!(
        table[4].starts_with("| gamma \\| reason mode |"),
        "{}",
        table[4]
    );
    let confusion = md_table(&md, "## Confusion counts");
    assert_eq!(confusion.len(), 2 + 3 * 5);
    assert!(confusion.iter().all(|l| md_cells(l).len() == 12));
    assert_eq!(md_table(&md, "## Runs").len(), 2 + runs.len());

    let quoted = render_markdown(
        &runs,
        &ReportOptions {
            quote_paper: true,
            ..ReportOptions::default()
        },
    );
    let t6 = md_table(&quoted, "Quoted from the paper: Table 6");
    assert_eq!(t6.len(), 2 + report::paper::TABLE6.len());
    assert!(t6.iter().skip(2).all(|l| md_cells(l).len() == 7));
    assert!(t6[2].contains("_47.46_"));
    let t3 = md_table(&quoted, "Quoted from the paper: Table 3");
    assert_eq!(t3.len(), 2 + report::paper::TABLE3.len());
    // Our score table is the same with or without the quotes.
    assert_eq!(md_table(&quoted, "## Scores per policy"), table);
}

#[test]
fn worst_errors_are_the_most_confident_wrong_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = three_runs(tmp.path());
    let worst = report::worst_errors(&runs[0], 5);
    assert_eq!(worst.len(), 5);
    assert!(worst.iter().all(|r| r.is_wrong()));
    let conf: Vec<f64> = worst.iter().map(|r| r.confidence().unwrap()).collect();
    assert!(conf.windows(2).all(|w| w[0] >= w[1]), "{conf:?}");
    let best_other = runs[0]
        .rows
        .iter()
        .filter(|r| r.is_wrong() && !worst.iter().any(|w| w.id == r.id))
        .filter_map(|r| r.confidence())
        .fold(0.0, f64::max);
    assert!(best_other <= conf[4]);
}

fn write_files(dir: &Path, run_json: &str, predictions: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("run.json"), run_json).unwrap();
    std::fs::write(dir.join("predictions.jsonl"), predictions).unwrap();
}

const GOOD_ROW: &str = r#"{"id":"a","policy":"L1","label":"safe","pred":"safe"}"#;

#[test]
fn bad_run_directories_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |dir: &PathBuf| load_run(dir).unwrap_err().to_string();

    let missing = tmp.path().join("missing");
    std::fs::create_dir_all(&missing).unwrap();
    let e = err(&missing);
    assert!(e.contains("run.json"), "{e}");

    let corrupt = tmp.path().join("corrupt");
    write_files(&corrupt, "{\"name\": \"x\",\n  \"threshold\": }", GOOD_ROW);
    let e = err(&corrupt);
    assert!(e.contains("run.json") && e.contains('2'), "{e}");

    let bad_line = tmp.path().join("bad-line");
    let rows = format!("{GOOD_ROW}\n{GOOD_ROW}\n{{\"id\":\"b\",\"policy\":\"L1\",\"label\":\"maybe\",\"pred\":\"safe\"}}\n");
    write_files(&bad_line, "{}", &rows);
    let e = err(&bad_line);
    assert!(
        e.contains("predictions.jsonl") && e.contains('3') && e.contains("maybe"),
        "{e}"
    );

    let not_json = tmp.path().join("not-json");
    write_files(&not_json, "{}", &format!("{GOOD_ROW}\n{{oops\n"));
    let e = err(&not_json);
    assert!(e.contains("predictions.jsonl") && e.contains('2'), "{e}");

    let no_predictions = tmp.path().join("no-predictions");
    std::fs::create_dir_all(&no_predictions).unwrap();
    std::fs::write(no_predictions.join("run.json"), "{}").unwrap();
    let e = err(&no_predictions);
    assert!(e.contains("predictions.jsonl"), "{e}");

    let corrupt_summary = tmp.path().join("corrupt-summary");
    write_files(&corrupt_summary, "{}", GOOD_ROW);
    std::fs::write(corrupt_summary.join("summary.json"), "{\"macro\": ").unwrap();
    let e = err(&corrupt_summary);
    assert!(e.contains("summary.json"), "{e}");

    // Minimal files load: every run.json field is optional, null pred = unassessed.
    let minimal = tmp.path().join("minimal");
    write_files(
        &minimal,
        "{}",
        &format!("{GOOD_ROW}\n{{\"id\":\"b\",\"policy\":\"L2\",\"label\":1,\"pred\":null,\"error\":\"timeout\"}}\n"),
    );
    let run = load_run(&minimal).unwrap();
    assert_eq!(run.name(), "minimal");
    assert_eq!(
        (run.unassessed, run.errors, run.metrics.pooled.n),
        (1, 1, 1)
    );
    let html = render_html(&[run], &ReportOptions::default());
    assert!(html.contains("minimal"));
}

#[test]
fn thumbnails_outside_the_run_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::write(tmp.path().join("secret.jpg"), [0xFF, 0xD8, 0xFF, 0xE0]).unwrap();
    write_files(
        &dir,
        "{}",
        r#"{"id":"a","policy":"L1","label":"safe","pred":"unsafe","thumb":"../secret.jpg"}"#,
    );
    let run = load_run(&dir).unwrap();
    assert!(run.thumbs.is_empty());
    assert!(
        run.notes.iter().any(|n| n.contains("thumbnail")),
        "{:?}",
        run.notes
    );
}

/// Renders a report in headless Chromium and checks the screenshot shows something. Without
/// `chromium` on PATH the test fails, unless `SAFEGUARD_NO_CHROMIUM=1` says the tool is knowingly
/// absent (`scripts/test` sets it, with a warning, on machines without Chromium; CI installs it
/// and never sets it).
#[test]
fn report_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        assert!(
            std::env::var_os("SAFEGUARD_NO_CHROMIUM").is_some(),
            "chromium is not on PATH: install it (apt-get install chromium) or set \
             SAFEGUARD_NO_CHROMIUM=1 to skip this test knowingly"
        );
        println!("skipped: chromium is not on PATH and SAFEGUARD_NO_CHROMIUM is set");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let runs = three_runs(tmp.path());
    let html_path = tmp.path().join("report.html");
    let png_path = tmp.path().join("report.png");
    let options = ReportOptions {
        quote_paper: true,
        ..ReportOptions::default()
    };
    std::fs::write(&html_path, render_html(&runs, &options)).unwrap();
    let profile = tmp.path().join("profile");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg("--window-size=1280,2400")
        .arg(format!("file://{}", html_path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(90) {
            child.kill().unwrap();
            panic!("chromium took more than 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bytes = std::fs::read(&png_path).expect("chromium wrote a screenshot");
    assert!(
        bytes.len() > 30_000,
        "screenshot is only {} bytes",
        bytes.len()
    );
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1280, 2400));
    let mut colours: Vec<[u8; 3]> = img.pixels().step_by(7).map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 200, "only {} colours", colours.len());
    // The page is drawn across its height, not just a header on a blank page.
    let rows_with_ink = (0..img.height())
        .step_by(40)
        .filter(|y| (0..img.width()).any(|x| img.get_pixel(x, *y).0 != img.get_pixel(0, *y).0))
        .count();
    assert!(
        rows_with_ink > 40,
        "only {rows_with_ink} of 60 sampled rows drawn"
    );
}
