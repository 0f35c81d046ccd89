//! `safeguard data demo` and `safeguard eval` end to end on the tiny trained checkpoint: the
//! run directory, metrics equal to `safeguard metrics`, kill-and-resume, refusals.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli_common::{fails, ok};
use crate::serve_cmd::Server;

fn tiny_guard() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../safeguard-engine/tests/fixtures/tiny-guard")
        .display()
        .to_string()
}

fn demo(dir: &Path) -> String {
    let out = ok(&["data", "demo", "--out", dir.to_str().unwrap()]);
    out.trim().to_string()
}

fn eval_args<'a>(dataset: &'a str, out: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "--dataset",
        dataset,
        "--out",
        out,
        "--model",
        model,
        "--batch-size",
        "1",
    ]
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_run_writes_predictions_summary_and_run_json_whose_metrics_equal_safeguard_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = demo(&tmp.path().join("demo"));
    let run = tmp.path().join("run");
    let model = tiny_guard();
    ok(&eval_args(&dataset, run.to_str().unwrap(), &model));

    let rows = lines(&run.join("predictions.jsonl"));
    assert_eq!(rows.len(), 60, "12 images x 5 policies");
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 60);
    for row in &rows {
        assert!(row["p_unsafe"].as_f64().is_some(), "{row}");
        if row["pred"] != row["label"] {
            let thumb = run.join(row["thumb"].as_str().expect("errors get a thumbnail"));
            assert!(thumb.is_file(), "{}", thumb.display());
        }
    }
    let info = json(&run.join("run.json"));
    assert_eq!(info["dataset"]["items"], 60);
    assert_eq!(info["backend"], "local");
    assert_eq!(info["mode"], "score");
    assert_eq!(info["items_done"], 60);
    assert!(info["finished"].is_string());
    assert_eq!(info["policies"].as_object().unwrap().len(), 5);

    // summary.json carries exactly what `safeguard metrics` computes from the predictions.
    let summary = json(&run.join("summary.json"));
    let metrics: Value = serde_json::from_str(&ok(&[
        "metrics",
        run.join("predictions.jsonl").to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    for key in ["per_policy", "macro", "pooled"] {
        assert_eq!(summary[key], metrics[key], "{key}");
    }
    assert!(summary["per_category"].as_object().unwrap().len() >= 4);
    assert!(summary["pairs"]["n"].as_u64().unwrap() > 0);
    assert_eq!(summary["errors"], 0);
}

#[test]
fn a_killed_run_resumes_without_duplicate_or_lost_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = demo(&tmp.path().join("demo"));
    let run = tmp.path().join("run");
    let model = tiny_guard();
    let args = eval_args(&dataset, run.to_str().unwrap(), &model);
    let predictions = run.join("predictions.jsonl");

    let mut child = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let done = std::fs::read_to_string(&predictions)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if done >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress in 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = std::fs::read_to_string(&predictions).unwrap();
    let complete = before.lines().filter(|l| l.ends_with('}')).count();
    assert!(
        complete < 60,
        "the run finished before it was killed; the test needs a slower run"
    );

    // Without --resume the directory is refused, nothing is touched.
    let err = fails(&args);
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(std::fs::read_to_string(&predictions).unwrap(), before);

    let mut resume = args.clone();
    resume.push("--resume");
    let out = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(&resume)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resumed"), "{stderr}");

    let rows = lines(&predictions);
    assert_eq!(rows.len(), 60, "no row lost or duplicated");
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 60);
    // The rows written before the kill are kept as they were.
    for (old, new) in before.lines().zip(&rows).take(complete) {
        assert_eq!(serde_json::from_str::<Value>(old).unwrap(), *new);
    }
    assert_eq!(json(&run.join("run.json"))["items_done"], 60);

    // Resuming a finished run judges nothing more.
    let out = ok(&resume);
    assert!(out.contains("macro score"));
    assert_eq!(lines(&predictions).len(), 60);
}

#[test]
fn a_resume_with_other_settings_or_a_corrupt_line_is_refused_naming_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = demo(&tmp.path().join("demo"));
    let run = tmp.path().join("run");
    let model = tiny_guard();
    let mut args = eval_args(&dataset, run.to_str().unwrap(), &model);
    args.extend(["--policies", "L1", "--no-rules"]);
    ok(&args);

    let mut other = args.clone();
    other.extend(["--resume", "--threshold", "0.7"]);
    let err = fails(&other);
    assert!(err.contains("mode/threshold"), "{err}");

    let predictions = run.join("predictions.jsonl");
    let text = std::fs::read_to_string(&predictions).unwrap();
    let mut broken: Vec<&str> = text.lines().collect();
    broken[2] = "{not json";
    std::fs::write(&predictions, broken.join("\n") + "\n").unwrap();
    let mut resume = args.clone();
    resume.push("--resume");
    let err = fails(&resume);
    assert!(
        err.contains("predictions.jsonl") && err.contains("line 3"),
        "{err}"
    );

    let err = fails(&[
        "eval",
        "--dataset",
        &dataset,
        "--out",
        tmp.path().join("x").to_str().unwrap(),
        "--policies",
        "L9",
    ]);
    assert!(err.contains("L9") && err.contains("L1, L2"), "{err}");
    let missing = PathBuf::from("/nonexistent/bench.parquet");
    let err = fails(&[
        "eval",
        "--dataset",
        missing.to_str().unwrap(),
        "--out",
        tmp.path().join("y").to_str().unwrap(),
    ]);
    assert!(err.contains("/nonexistent/bench.parquet"), "{err}");
}

#[test]
fn the_remote_backend_against_our_own_server_matches_the_local_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = demo(&tmp.path().join("demo"));
    let model = tiny_guard();
    let local = tmp.path().join("local");
    let mut args = eval_args(&dataset, local.to_str().unwrap(), &model);
    args.extend(["--policies", "L3", "--no-rules"]);
    ok(&args);

    let server = Server::start(&[]);
    let endpoint = format!("http://{}/v1", server.addr);
    let remote = tmp.path().join("remote");
    ok(&[
        "eval",
        "--dataset",
        &dataset,
        "--out",
        remote.to_str().unwrap(),
        "--policies",
        "L3",
        "--backend",
        "remote",
        "--endpoint",
        &endpoint,
        "--remote-model",
        "tiny-guard",
    ]);
    let by_id = |rows: Vec<Value>| -> std::collections::BTreeMap<String, Value> {
        rows.into_iter()
            .map(|r| (r["id"].as_str().unwrap().to_string(), r))
            .collect()
    };
    let local_rows = by_id(lines(&local.join("predictions.jsonl")));
    let remote_rows = by_id(lines(&remote.join("predictions.jsonl")));
    assert_eq!(local_rows.len(), 12);
    assert_eq!(
        remote_rows.keys().collect::<Vec<_>>(),
        local_rows.keys().collect::<Vec<_>>()
    );
    for (id, l) in &local_rows {
        let r = &remote_rows[id];
        assert_eq!(
            r["pred"], l["pred"],
            "{id}: same model, same prompt, same verdict"
        );
        // The server's chat logprobs give the remote backend the local score.
        let (ps, pl) = (r["p_unsafe"].as_f64(), l["p_unsafe"].as_f64());
        assert!(
            matches!((ps, pl), (Some(a), Some(b)) if (a - b).abs() < 1e-6),
            "{id}: remote score {ps:?}, local {pl:?}"
        );
    }
    assert_eq!(json(&remote.join("run.json"))["backend"], "remote");
}
