//! Format detection and format names.

use std::str::FromStr;

use safeguard_eval::dataset::{detect, DatasetFormat};
use safeguard_eval::EvalError;

use crate::common::{strs, write, write_parquet, Leaf};

#[test]
fn format_names_round_trip() {
    for format in [
        DatasetFormat::SafeEditBench,
        DatasetFormat::UnsafeBench,
        DatasetFormat::LlavaGuard,
        DatasetFormat::Jsonl,
    ] {
        assert_eq!(
            DatasetFormat::from_str(&format.to_string()).unwrap(),
            format
        );
    }
    assert_eq!(
        "SafeEditBench".parse::<DatasetFormat>().unwrap(),
        DatasetFormat::SafeEditBench
    );
    let err = "csv".parse::<DatasetFormat>().unwrap_err();
    assert!(err.to_string().contains("unknown dataset format \"csv\""));
}

#[test]
fn json_files_are_told_apart_by_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(
        dir.path(),
        "m.jsonl",
        b"\n{\"id\": \"a\", \"image\": \"a.png\", \"policy\": \"L1\", \"label\": \"safe\"}\n",
    );
    assert_eq!(detect(&manifest).unwrap(), DatasetFormat::Jsonl);
    let llava = write(
        dir.path(),
        "l.json",
        br#"[{"image": "a.png", "rating": "Safe"}]"#,
    );
    assert_eq!(detect(&llava).unwrap(), DatasetFormat::LlavaGuard);
    let other = write(
        dir.path(),
        "o.json",
        br#"{"image": "a.png", "verdict": "safe"}"#,
    );
    let err = detect(&other).unwrap_err();
    assert!(
        err.to_string().contains("its keys: image, verdict"),
        "{err}"
    );
    assert!(err.to_string().contains("--format"), "{err}");
    // Several candidates in a directory: say which.
    let err = detect(dir.path()).unwrap_err();
    assert!(err.to_string().contains("several data files"), "{err}");
}

#[test]
fn parquet_is_told_apart_by_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let numeric = dir.path().join("numeric.parquet");
    write_parquet(
        &numeric,
        "message schema { OPTIONAL BYTE_ARRAY image_path (UTF8); OPTIONAL INT64 safety_label; }",
        vec![strs(&[Some("a.png")], 1), Leaf::I64(vec![Some(1)])],
    );
    let err = detect(&numeric).unwrap_err();
    assert!(
        err.to_string()
            .contains("numeric `safety_label` without `policy_name`"),
        "{err}"
    );
    let with_policy = dir.path().join("se.parquet");
    write_parquet(
        &with_policy,
        "message schema { OPTIONAL INT64 safety_label; OPTIONAL BYTE_ARRAY policy_name (UTF8); }",
        vec![Leaf::I64(vec![Some(1)]), strs(&[Some("L1")], 1)],
    );
    assert_eq!(detect(&with_policy).unwrap(), DatasetFormat::SafeEditBench);
}

#[test]
fn unknown_paths_and_extensions() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        detect(&dir.path().join("nope")),
        Err(EvalError::Io { .. })
    ));
    let txt = write(dir.path(), "notes.txt", b"hello");
    let err = detect(&txt).unwrap_err();
    assert!(err
        .to_string()
        .contains("not .parquet, .csv, .json or .jsonl"));
    let empty = tempfile::tempdir().unwrap();
    let err = detect(empty.path()).unwrap_err();
    assert!(err
        .to_string()
        .contains("no .parquet, .csv, .json or .jsonl file"));
    let not_parquet = write(dir.path(), "broken.parquet", b"PAR1 not really");
    assert!(matches!(
        detect(&not_parquet),
        Err(EvalError::Parquet { .. })
    ));
}
