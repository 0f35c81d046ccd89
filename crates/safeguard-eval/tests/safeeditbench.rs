//! The SafeEditBench parquet loader, on files written with the demo's writer.

use std::sync::Arc;

use parquet::basic::{Compression, GzipLevel};
use safeguard_core::Verdict;
use safeguard_eval::dataset::{load, DatasetFormat, ImageSource, LoadOptions};
use safeguard_eval::demo::{write_safeeditbench, SafeEditRow};
use safeguard_eval::EvalError;

use crate::common::{strs, write_parquet, Leaf, PNG_1X1};

const L2_TEXT: &str = "Permissive platform. Extreme gore is not allowed.";
const L4_TEXT: &str = "General audience. No violence, no nudity, no drugs.";

fn row(path: &str, label: i64, policy: &str, text: &str) -> SafeEditRow {
    SafeEditRow {
        image: Some(Arc::from(PNG_1X1)),
        image_name: Some(path.rsplit('/').next().unwrap().to_string()),
        image_path: Some(path.to_string()),
        safety_label: Some(label),
        policy_name: Some(policy.to_string()),
        policy: Some(text.to_string()),
    }
}

fn rows() -> Vec<SafeEditRow> {
    vec![
        row("unsafe/O2/0001.jpg", 0, "L2", L2_TEXT),
        row("safe/O2/0001.png", 0, "L2", L2_TEXT),
        row("unsafe/O2/0001.jpg", 1, "L4", L4_TEXT),
        row("safe/O2/0001.png", 0, "L4", L4_TEXT),
        row("unsafe/O4/0002.jpg", 1, "L4", L4_TEXT),
    ]
}

#[test]
fn rows_become_items_with_policies_from_the_rows_and_recovered_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test-00000-of-00001.parquet");
    write_safeeditbench(&path, &rows(), Compression::GZIP(GzipLevel::default())).unwrap();
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ds.format, DatasetFormat::SafeEditBench);
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert_eq!(ds.items.len(), 5);
    assert_eq!(ds.policies["L2"].prompt_text(), L2_TEXT);
    assert_eq!(ds.policies["L4"].prompt_text(), L4_TEXT);

    let first = &ds.items[0];
    assert_eq!(first.id, "L2/unsafe/O2/0001.jpg");
    assert_eq!(first.policy, "L2");
    assert_eq!(first.label, Verdict::Safe);
    assert_eq!(first.pair_id.as_deref(), Some("O2/0001"));
    assert_eq!(first.category.as_deref(), Some("O2"));
    assert_eq!(first.source.as_deref(), Some("original"));
    assert_eq!(ds.items[1].source.as_deref(), Some("edited"));
    assert_eq!(ds.items[2].label, Verdict::Unsafe);
    assert_eq!(
        ds.items[4].pair_id, None,
        "an image without its edit has no pair"
    );
    match &first.image {
        ImageSource::Bytes { bytes, name } => {
            assert_eq!(&bytes[..], PNG_1X1);
            assert_eq!(name.as_deref(), Some("0001.jpg"));
        }
        other => panic!("expected embedded bytes, got {other:?}"),
    }
    // One allocation per distinct image.
    let (ImageSource::Bytes { bytes: a, .. }, ImageSource::Bytes { bytes: b, .. }) =
        (&ds.items[0].image, &ds.items[3].image)
    else {
        panic!("bytes expected");
    };
    assert!(Arc::ptr_eq(a, b));
}

#[test]
fn a_directory_of_parquet_files_is_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut all = rows();
    all.push(row("unsafe/O4/0003.jpg", 7, "L4", L4_TEXT));
    write_safeeditbench(&data.join("part-0.parquet"), &all[..2], Compression::SNAPPY).unwrap();
    write_safeeditbench(
        &data.join("part-1.parquet"),
        &all[2..],
        Compression::ZSTD(Default::default()),
    )
    .unwrap();
    let ds = load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(ds.items.len(), 5);
    assert_eq!(ds.name, dir.path().file_name().unwrap().to_string_lossy());
    assert_eq!(ds.items[2].id, "L4/unsafe/O2/0001.jpg");
    assert_eq!(ds.items[0].pair_id.as_deref(), Some("O2/0001"));
    // With several files, a bad row's reason names its file; the index is within that file.
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.skipped[0].index, 3);
    assert!(
        ds.skipped[0]
            .reason
            .starts_with("part-1.parquet: field `safety_label`"),
        "{}",
        ds.skipped[0].reason
    );
}

#[test]
fn a_policy_text_that_differs_within_a_policy_name_is_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.parquet");
    let mut rows = rows();
    rows[3].policy = Some("Some other wording of L4.".to_string());
    write_safeeditbench(&path, &rows, Compression::SNAPPY).unwrap();
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ds.items.len(), 4);
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.skipped[0].index, 3);
    assert!(
        ds.skipped[0]
            .reason
            .contains("field `policy`: text differs")
            && ds.skipped[0].reason.contains("at row 2"),
        "{}",
        ds.skipped[0].reason
    );
    assert_eq!(ds.policies["L4"].prompt_text(), L4_TEXT);

    let strict = LoadOptions {
        strict: true,
        ..LoadOptions::default()
    };
    let err = load(&path, &strict).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("bench.parquet: row 3 (0-based), field `policy`"),
        "{message}"
    );
}

#[test]
fn bad_labels_nulls_duplicates_and_missing_images_are_skipped_with_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.parquet");
    let mut rows = rows();
    rows[0].safety_label = Some(2);
    rows[1].policy_name = None;
    rows[2] = rows[4].clone(); // duplicate of row 4's id: row 4 is the bad one
    rows[3].image = None; // falls back to image.path, which is not on disk
    write_safeeditbench(&path, &rows, Compression::UNCOMPRESSED).unwrap();
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ds.items.len(), 1);
    let got: Vec<(usize, &str)> = ds
        .skipped
        .iter()
        .map(|b| (b.index, b.reason.as_str()))
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].0, 0);
    assert!(got[0]
        .1
        .contains("field `safety_label`: expected 0 (safe) or 1 (unsafe), found 2"));
    assert_eq!(got[1].0, 1);
    assert!(got[1].1.contains("field `policy_name`: missing value"));
    assert_eq!(got[2].0, 3);
    assert!(got[2].1.contains("field `image`") && got[2].1.contains("0001.png does not exist"));
    assert_eq!(got[3].0, 4);
    assert!(got[3].1.contains("field `id`: duplicate id") && got[3].1.contains("row 2"));
}

#[test]
fn a_missing_column_is_fatal_and_a_wrong_type_is_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-policy.parquet");
    write_parquet(
        &path,
        "message schema { OPTIONAL BYTE_ARRAY image_path (UTF8); OPTIONAL INT64 safety_label;
         OPTIONAL BYTE_ARRAY policy_name (UTF8); }",
        vec![
            strs(&[Some("a.png")], 1),
            Leaf::I64(vec![Some(1)]),
            strs(&[Some("L1")], 1),
        ],
    );
    let opts = LoadOptions {
        format: Some(DatasetFormat::SafeEditBench),
        ..LoadOptions::default()
    };
    let err = load(&path, &opts).unwrap_err();
    assert!(
        matches!(&err, EvalError::MissingColumn { column, .. } if column == "policy"),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("image_path, safety_label, policy_name"));

    let path = dir.path().join("float-label.parquet");
    let image = crate::common::write(dir.path(), "a.png", PNG_1X1);
    assert!(image.is_file());
    write_parquet(
        &path,
        "message schema { OPTIONAL BYTE_ARRAY image_path (UTF8); OPTIONAL DOUBLE safety_label;
         OPTIONAL BYTE_ARRAY policy_name (UTF8); OPTIONAL BYTE_ARRAY policy (UTF8); }",
        vec![
            strs(&[Some("a.png"), Some("a.png")], 1),
            Leaf::F64(vec![Some(0.5), None]),
            strs(&[Some("L1"), Some("L1")], 1),
            strs(&[Some("Anything goes."), Some("Anything goes.")], 1),
        ],
    );
    let err = load(&path, &opts).unwrap_err();
    assert!(
        matches!(err, EvalError::Empty { skipped: 2, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("field `safety_label`: expected 0 (safe) or 1 (unsafe), found number 0.5"),
        "{message}"
    );
}

#[test]
fn images_given_by_path_are_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::images(dir.path(), &["imgs/x_orig.png", "imgs/x_edited.png"]);
    let path = dir.path().join("bench.parquet");
    let mut rows = vec![
        row("imgs/x_orig.png", 1, "L3", "No gore."),
        row("imgs/x_edited.png", 0, "L3", "No gore."),
    ];
    for r in &mut rows {
        r.image = None;
        r.image_name = None;
    }
    write_safeeditbench(&path, &rows, Compression::SNAPPY).unwrap();
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(
        ds.items[0].image,
        ImageSource::File(dir.path().join("imgs/x_orig.png"))
    );
    assert_eq!(ds.items[1].pair_id.as_deref(), Some("imgs/x"));
}
