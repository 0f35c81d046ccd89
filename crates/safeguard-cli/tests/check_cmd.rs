use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli_common::{fails, ok, safeguard};

fn examples() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))
}

fn images() -> String {
    examples().join("images").to_str().unwrap().to_string()
}

fn no_nudity() -> String {
    examples()
        .join("policies/no-nudity.md")
        .to_str()
        .unwrap()
        .to_string()
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn example_photos_are_safe_under_a_nudity_policy() {
    let out = ok(&["check", &images(), "--policy", &no_nudity()]);
    assert_eq!(
        out.lines().filter(|l| l.contains(" safe ")).count(),
        3,
        "{out}"
    );
    let rows = json_lines(&ok(&[
        "check",
        &images(),
        "--policy",
        &no_nudity(),
        "--json",
    ]));
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row["verdict"], "safe", "{row}");
        assert_eq!(row["backend"], "lite");
        assert_eq!(row["policy"], "no-nudity");
        assert_eq!(row["policy_hash"].as_str().unwrap().len(), 64);
        let p = row["p_unsafe"].as_f64().unwrap();
        assert!((0.0..0.1).contains(&p), "{row}");
        assert!(row["rules_hit"].as_array().unwrap().is_empty());
    }
}

#[test]
fn rules_the_lite_backend_cannot_judge_leave_images_unassessed() {
    let image = examples().join("images/chelsea.jpg");
    let out = ok(&["check", image.to_str().unwrap(), "--policy", "L3"]);
    assert!(out.contains("unassessed"), "{out}");
    assert!(
        out.contains("note:") && out.contains("violence-graphic"),
        "{out}"
    );
    let rows = json_lines(&ok(&[
        "check",
        image.to_str().unwrap(),
        "--policy",
        "L3",
        "--json",
    ]));
    assert_eq!(rows[0]["verdict"], "unassessed");
    assert!(rows[0]["p_unsafe"].is_null());
}

#[test]
fn fail_on_unsafe_exits_1() {
    // At threshold 0 every nudity rule is hit, so every image is unsafe.
    let image = examples().join("images/coffee.jpg");
    let args = [
        "check",
        image.to_str().unwrap(),
        "--policy",
        &no_nudity(),
        "--threshold",
        "0",
    ];
    let out = ok(&args);
    assert!(
        out.contains("unsafe") && out.contains("nudity, sexual"),
        "{out}"
    );
    let mut with_flag = args.to_vec();
    with_flag.push("--fail-on-unsafe");
    assert_eq!(safeguard(&with_flag).status.code(), Some(1));
}

#[test]
fn a_corrupt_image_is_reported_and_the_others_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        examples().join("images/chelsea.jpg"),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let out = safeguard(&[
        "check",
        dir.path().to_str().unwrap(),
        "--policy",
        &no_nudity(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let rows = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(rows.len(), 2, "directories yield image files only");
    assert_eq!(rows[0]["verdict"], "safe");
    assert!(rows[1]["image"].as_str().unwrap().ends_with("b.png"));
    assert!(
        rows[1]["error"].as_str().unwrap().contains("invalid image"),
        "{}",
        rows[1]
    );
}

#[test]
fn globs_expand_and_missing_inputs_fail() {
    let pattern = format!("{}/c*.jpg", images());
    let rows = json_lines(&ok(&[
        "check",
        &pattern,
        "--policy",
        &no_nudity(),
        "--json",
    ]));
    assert_eq!(rows.len(), 2, "chelsea and coffee");
    let err = fails(&["check", "/no/such/image.jpg"]);
    assert!(err.contains("/no/such/image.jpg"), "{err}");
    let err = fails(&["check", &images(), "--policy", "L9"]);
    assert!(err.contains("L9"), "{err}");
    let err = fails(&["check", &images(), "--threshold", "1.5"]);
    assert!(err.contains("--threshold"), "{err}");
}

#[test]
fn oversized_files_are_refused_before_reading() {
    let image = examples().join("images/coffee.jpg");
    let out = safeguard(&[
        "check",
        image.to_str().unwrap(),
        "--policy",
        &no_nudity(),
        "--max-image-bytes",
        "100",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("--max-image-bytes"), "{stdout}");
}

#[test]
fn a_configured_model_selects_the_local_backend_and_a_bad_one_fails_clearly() {
    let err = fails(&["check", &images(), "--model", "/nonexistent/guard-model"]);
    assert!(err.contains("backend: local"), "{err}");
    assert!(err.contains("/nonexistent/guard-model"), "{err}");
}

#[test]
fn the_config_file_is_read_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "model = \"/nonexistent/from-config\"\n").unwrap();
    let run = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_safeguard"))
            .args(["check", &images()])
            .env("SAFEGUARD_CONFIG", path)
            .env_remove("SAFEGUARD_MODEL")
            .output()
            .unwrap()
    };
    let out = run(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("backend: local") && err.contains("/nonexistent/from-config"),
        "{err}"
    );
    assert!(
        err.contains("model from"),
        "says where the model came from: {err}"
    );

    std::fs::write(&config, "modle = \"typo\"\n").unwrap();
    let out = run(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config.toml") && err.contains("modle"),
        "{err}"
    );

    let out = run(&dir.path().join("missing.toml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SAFEGUARD_CONFIG") && err.contains("missing.toml"),
        "{err}"
    );
}

#[test]
fn a_dead_remote_endpoint_is_an_error_per_image_naming_it() {
    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}/v1");
    let out = safeguard(&[
        "check",
        &format!("{}/coffee.jpg", images()),
        "--backend",
        "remote",
        "--endpoint",
        &endpoint,
        "--remote-model",
        "guard",
        "--timeout",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let rows = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(rows.len(), 1);
    let error = rows[0]["error"].as_str().unwrap();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");

    let err = fails(&["check", &images(), "--backend", "remote"]);
    assert!(err.contains("--endpoint"), "{err}");
}

fn tiny_guard() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../safeguard-engine/tests/fixtures/tiny-guard")
}

#[test]
fn the_local_backend_judges_with_scores_and_rules_hit() {
    let dir = tiny_guard();
    let model = dir.to_str().unwrap();
    let a = dir.join("image-a.png");
    let b = dir.join("image-b.png");
    let out = safeguard(&[
        "check",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--policy",
        "L3",
        "--model",
        model,
        "--json",
        "--fail-on-unsafe",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "image A is unsafe: {stderr}");
    assert!(stderr.contains("backend: local"), "{stderr}");
    let rows = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["backend"], "local");
    assert_eq!(rows[0]["verdict"], "unsafe");
    assert_eq!(rows[0]["rules_hit"], serde_json::json!(["sexual"]));
    assert!(rows[0]["p_unsafe"].as_f64().unwrap() > 0.9);
    assert_eq!(rows[1]["verdict"], "safe");
    assert_eq!(rows[1]["rules"].as_array().unwrap().len(), 6);

    // Reason mode: the trained rationale and answer come back.
    let out = ok(&[
        "check",
        b.to_str().unwrap(),
        "--policy",
        "L3",
        "--model",
        model,
        "--mode",
        "reason",
        "--json",
    ]);
    let rows = json_lines(&out);
    assert_eq!(rows[0]["verdict"], "safe");
    assert_eq!(rows[0]["rationale"], "blue stripes");

    // An answer cut short has no verdict: an error unless --on-unparsable says otherwise.
    let short = [
        "check",
        b.to_str().unwrap(),
        "--model",
        model,
        "--mode",
        "reason",
        "--max-new-tokens",
        "2",
        "--json",
    ];
    let out = safeguard(&short);
    assert_eq!(out.status.code(), Some(2));
    let rows = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert!(
        rows[0]["error"].as_str().unwrap().contains("no verdict"),
        "{rows:?}"
    );
    let mut fallback = short.to_vec();
    fallback.extend(["--on-unparsable", "unsafe"]);
    let rows = json_lines(&ok(&fallback));
    assert_eq!(rows[0]["verdict"], "unsafe");
    assert!(rows[0]["note"]
        .as_str()
        .unwrap()
        .contains("--on-unparsable"));
}

/// What falls back or is changed for safety is said on stderr: pixel bounds when the model
/// directory has no processor file, the f32 vision tower under --dtype f16.
#[test]
fn the_local_backend_warns_about_defaults_and_dtype_changes() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_guard().join(file), dir.path().join(file)).unwrap();
    }
    let image = tiny_guard().join("image-a.png");
    let out = safeguard(&[
        "check",
        image.to_str().unwrap(),
        "--policy",
        "L3",
        "--model",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning:")
            && stderr.contains("neither preprocessor_config.json nor processor_config.json")
            && stderr.contains("max_pixels 1003520"),
        "{stderr}"
    );
    let out = safeguard(&[
        "check",
        image.to_str().unwrap(),
        "--policy",
        "L3",
        "--model",
        tiny_guard().to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: the vision tower runs in F32"),
        "{stderr}"
    );
    assert!(!stderr.contains("processor_config.json"), "{stderr}");
}

/// `--template` chooses the prompt layout of the local backend; a template the remote backend
/// cannot use is refused up front, and an unknown name lists the built-ins.
#[test]
fn templates_are_chosen_on_the_command_line() {
    let image = tiny_guard().join("image-a.png");
    let model = tiny_guard();
    let base = [
        "check",
        image.to_str().unwrap(),
        "--policy",
        "L3",
        "--model",
        model.to_str().unwrap(),
        "--json",
    ];
    for template in ["plain", "safeguard-vl", "llavaguard"] {
        let mut args = base.to_vec();
        args.extend(["--template", template]);
        let out = ok(&args);
        let row: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        let p = row["p_unsafe"]
            .as_f64()
            .unwrap_or_else(|| panic!("{template}: {row}"));
        assert!((0.0..=1.0).contains(&p), "{template}: {row}");
    }
    let mut args = base.to_vec();
    args.extend(["--template", "nope"]);
    let err = fails(&args);
    assert!(
        err.contains("safeguard-vl") && err.contains("nope"),
        "{err}"
    );
    let err = fails(&[
        "check",
        image.to_str().unwrap(),
        "--backend",
        "remote",
        "--endpoint",
        "http://127.0.0.1:9/v1",
        "--remote-model",
        "m",
        "--template",
        "plain",
    ]);
    assert!(err.contains("local backend only"), "{err}");
}
