use safeguard_eval::report::sample::{write_run, SampleRun};

use crate::cli_common::{fails, ok, safeguard};

#[test]
fn report_writes_html_and_markdown_for_several_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (i, name) in ["first run", "second run"].iter().enumerate() {
        let dir = tmp.path().join(format!("run{i}"));
        write_run(
            &dir,
            &SampleRun {
                name: name.to_string(),
                seed: i as u64,
                images: 8,
                ..SampleRun::default()
            },
        )
        .unwrap();
        dirs.push(dir.to_str().unwrap().to_string());
    }
    let html = tmp.path().join("out.html");
    let md = tmp.path().join("out.md");
    let mut args = vec!["report"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend([
        "--out",
        html.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--quote-paper",
    ]);
    ok(&args);
    let html = std::fs::read_to_string(&html).unwrap();
    let md = std::fs::read_to_string(&md).unwrap();
    for text in [&html, &md] {
        assert!(text.contains("first run") && text.contains("second run"));
        assert!(text.contains("LlavaGuard-7B"), "quoted rows asked for");
    }
    assert!(html.contains("<svg ") && !html.contains("http://") && !html.contains("https://"));
    assert!(md.contains("| run | L1 | L2 | L3 | L4 | L5 | macro | pooled F1 | pooled acc. |"));
}

#[test]
fn report_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("run.json"), "{}").unwrap();
    std::fs::write(
        dir.join("predictions.jsonl"),
        "{\"id\":\"a\",\"policy\":\"L1\",\"label\":\"safe\",\"pred\":\"safe\"}\nnot json\n",
    )
    .unwrap();
    let out = tmp.path().join("r.html");
    let err = fails(&[
        "report",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("predictions.jsonl") && err.contains('2'),
        "{err}"
    );
    assert!(!out.exists());

    let missing = tmp.path().join("nowhere");
    let err = fails(&["report", missing.to_str().unwrap()]);
    assert!(err.contains("nowhere"), "{err}");

    // At least one run directory is required.
    assert!(!safeguard(&["report"]).status.success());
}
