//! The UnsafeBench loaders: parquet with Safe/Unsafe strings, and CSV + image folder.

use safeguard_core::policy::presets;
use safeguard_core::{Policy, Verdict};
use safeguard_eval::dataset::{detect, load, DatasetFormat, ImageSource, LoadOptions};
use safeguard_eval::EvalError;

use crate::common::{images, strs, write, write_parquet, Leaf, PNG_1X1};

const SCHEMA: &str = "message schema {
  OPTIONAL group image { OPTIONAL BYTE_ARRAY bytes; OPTIONAL BYTE_ARRAY path (UTF8); }
  OPTIONAL BYTE_ARRAY safety_label (UTF8);
  OPTIONAL BYTE_ARRAY category (UTF8);
  OPTIONAL BYTE_ARRAY source (UTF8);
}";

fn parquet_fixture(dir: &std::path::Path, labels: &[Option<&str>]) -> std::path::PathBuf {
    let n = labels.len();
    let path = dir.join("test-00000-of-00001.parquet");
    write_parquet(
        &path,
        SCHEMA,
        vec![
            Leaf::Bytes(vec![Some(PNG_1X1.to_vec()); n], 2),
            Leaf::Bytes(vec![None; n], 2),
            strs(labels, 1),
            strs(&vec![Some("Violence"); n], 1),
            strs(&vec![Some("Lexica"); n], 1),
        ],
    );
    path
}

#[test]
fn parquet_rows_are_judged_under_the_openai_preset_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = parquet_fixture(dir.path(), &[Some("Safe"), Some("Unsafe"), Some("unsafe")]);
    assert_eq!(detect(&path).unwrap(), DatasetFormat::UnsafeBench);
    assert_eq!(detect(dir.path()).unwrap(), DatasetFormat::UnsafeBench);
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ds.format, DatasetFormat::UnsafeBench);
    let labels: Vec<Verdict> = ds.items.iter().map(|i| i.label).collect();
    assert_eq!(labels, [Verdict::Safe, Verdict::Unsafe, Verdict::Unsafe]);
    assert_eq!(ds.items[0].id, "test-00000-of-00001-0");
    assert_eq!(ds.items[0].policy, "openai");
    assert_eq!(ds.items[0].category.as_deref(), Some("Violence"));
    assert_eq!(ds.items[0].source.as_deref(), Some("Lexica"));
    assert!(matches!(ds.items[0].image, ImageSource::Bytes { .. }));
    assert_eq!(ds.policies["openai"], presets::get("openai").unwrap());
}

#[test]
fn a_chosen_policy_replaces_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = parquet_fixture(dir.path(), &[Some("Safe")]);
    let policy = Policy::from_text("strict", "Nothing violent at all.").unwrap();
    let opts = LoadOptions {
        policy: Some(policy.clone()),
        ..LoadOptions::default()
    };
    let ds = load(&path, &opts).unwrap();
    assert_eq!(ds.items[0].policy, "strict");
    assert_eq!(ds.policies.len(), 1);
    assert_eq!(ds.policies["strict"], policy);
}

#[test]
fn bad_parquet_labels_are_skipped_or_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = parquet_fixture(dir.path(), &[Some("Safe"), Some("Maybe"), None]);
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ds.items.len(), 1);
    let indexes: Vec<usize> = ds.skipped.iter().map(|b| b.index).collect();
    assert_eq!(indexes, [1, 2]);
    assert!(ds.skipped[0]
        .reason
        .contains("field `safety_label`: expected Safe or Unsafe, found \"Maybe\""));
    assert!(ds.skipped[1].reason.contains("missing value"));
    let strict = LoadOptions {
        strict: true,
        ..LoadOptions::default()
    };
    assert!(matches!(
        load(&path, &strict),
        Err(EvalError::Row { index: 1, .. })
    ));
}

#[test]
fn csv_with_an_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path(), &["images/a.png", "images/b.png"]);
    let csv = "image,safety_label,category,source\n\
               images/a.png,Safe,Hate,Laion5B\n\
               images/b.png,Unsafe,,Lexica\n\
               images/gone.png,Unsafe,Hate,Lexica\n\
               images/a.png,Dangerous,Hate,Lexica\n\
               images/a.png,Safe\n";
    let path = write(dir.path(), "unsafebench.csv", csv.as_bytes());
    assert_eq!(detect(&path).unwrap(), DatasetFormat::UnsafeBench);
    assert_eq!(detect(dir.path()).unwrap(), DatasetFormat::UnsafeBench);
    let ds = load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(ds.items.len(), 2);
    assert_eq!(ds.items[0].id, "images/a.png");
    assert_eq!(
        ds.items[0].image,
        ImageSource::File(dir.path().join("images/a.png"))
    );
    assert_eq!(ds.items[1].label, Verdict::Unsafe);
    assert_eq!(ds.items[1].category, None);
    let got: Vec<(usize, bool)> = ds
        .skipped
        .iter()
        .map(|b| (b.index, b.reason.contains("field")))
        .collect();
    assert_eq!(got, [(2, true), (3, true), (4, true)]);
    assert!(ds.skipped[0].reason.contains("gone.png does not exist"));
    assert!(ds.skipped[1].reason.contains("\"Dangerous\""));
    assert!(ds.skipped[2]
        .reason
        .contains("duplicate id \"images/a.png\""));
}

#[test]
fn a_csv_without_labels_is_not_unsafebench() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "x.csv", b"image,label\na.png,safe\n");
    let err = detect(&path).unwrap_err();
    assert!(matches!(err, EvalError::UnknownFormat { .. }));
    assert!(err.to_string().contains("columns: image, label"), "{err}");
    let opts = LoadOptions {
        format: Some(DatasetFormat::UnsafeBench),
        ..LoadOptions::default()
    };
    let err = load(&path, &opts).unwrap_err();
    assert!(
        matches!(&err, EvalError::MissingColumn { column, .. } if column == "safety_label"),
        "{err:?}"
    );
}
