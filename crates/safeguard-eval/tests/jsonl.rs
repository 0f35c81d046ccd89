//! The JSONL manifest loader.

use safeguard_core::Verdict;
use safeguard_eval::dataset::{load, DatasetFormat, ImageSource, LoadOptions};
use safeguard_eval::EvalError;

use crate::common::{images, write};

const GOOD: &str = r#"{"id": "a", "image": "img/a.png", "policy": "L3", "label": "unsafe", "category": "violence", "pair_id": "p1", "source": "demo"}
{"id": "b", "image": "img/b.png", "policy": "l3", "label": 0, "pair_id": "p1"}

{"id": "c", "image": "img/a.png", "policy": "policies/strict.md", "label": "Safe"}
"#;

fn fixture(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path(), &["img/a.png", "img/b.png"]);
    write(
        dir.path(),
        "policies/strict.md",
        b"# Strict\n\nNothing violent.\n\n## Prohibited\n### violence: Violence\nAny violence.\n",
    );
    write(dir.path(), "manifest.jsonl", manifest.as_bytes());
    dir
}

#[test]
fn manifest_rows_become_items_with_presets_and_policy_files() {
    let dir = fixture(GOOD);
    let ds = load(&dir.path().join("manifest.jsonl"), &LoadOptions::default()).unwrap();
    assert_eq!(ds.format, DatasetFormat::Jsonl);
    assert_eq!(ds.name, "manifest");
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert_eq!(ds.items.len(), 3);
    let a = &ds.items[0];
    assert_eq!(a.label, Verdict::Unsafe);
    assert_eq!(a.policy, "L3");
    assert_eq!(a.category.as_deref(), Some("violence"));
    assert_eq!(a.pair_id.as_deref(), Some("p1"));
    assert_eq!(a.source.as_deref(), Some("demo"));
    assert_eq!(a.image, ImageSource::File(dir.path().join("img/a.png")));
    assert_eq!(
        ds.items[1].policy, "L3",
        "preset names are case-insensitive"
    );
    assert_eq!(ds.items[1].label, Verdict::Safe);
    assert_eq!(ds.items[2].policy, "strict");
    let names: Vec<&str> = ds.policies.keys().map(String::as_str).collect();
    assert_eq!(names, ["L3", "strict"]);
}

#[test]
fn bad_rows_are_skipped_with_their_index_or_fatal_when_strict() {
    let manifest = r#"{"id": "a", "image": "img/a.png", "policy": "L3", "label": "unsafe"}
{"id": "b", "image": "img/b.png", "policy": "L3", "label": "maybe"}
{"id": "a", "image": "img/b.png", "policy": "L3", "label": "safe"}
{"id": "d", "image": "img/missing.png", "policy": "L3", "label": "safe"}
{"id": "e", "image": "img/b.png", "label": "safe"}
{"id": "f", "image": 7, "policy": "L3", "label": "safe"}
{"id": "g", "image": "img/b.png", "policy": "L9", "label": "safe"}
not json
{"id": "h", "image": "img/b.png", "policy": "L3", "label": "safe"}
"#;
    let dir = fixture(manifest);
    let path = dir.path().join("manifest.jsonl");
    let ds = load(&path, &LoadOptions::default()).unwrap();
    let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a", "h"]);
    let indexes: Vec<usize> = ds.skipped.iter().map(|b| b.index).collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5, 6, 7]);
    let reasons: Vec<&str> = ds.skipped.iter().map(|b| b.reason.as_str()).collect();
    assert!(reasons[0].contains("field `label`") && reasons[0].contains("\"maybe\""));
    assert!(reasons[1].contains("field `id`") && reasons[1].contains("duplicate id \"a\""));
    assert!(reasons[2].contains("field `image`") && reasons[2].contains("missing.png"));
    assert!(reasons[3].contains("field `policy`: missing"));
    assert!(reasons[4].contains("field `image`: expected a string, found a number"));
    assert!(reasons[5].contains("\"L9\" is neither a preset"));
    assert!(reasons[6].contains("not valid JSON"));
    assert!(ds.skipped[0].to_string().starts_with("row 1 (0-based): "));

    let strict = LoadOptions {
        strict: true,
        ..LoadOptions::default()
    };
    let err = load(&path, &strict).unwrap_err();
    assert!(matches!(err, EvalError::Row { index: 1, .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("manifest.jsonl: row 1 (0-based), field `label`"),
        "{message}"
    );
}

#[test]
fn limit_stops_early_and_an_empty_result_is_an_error() {
    let dir = fixture(GOOD);
    let path = dir.path().join("manifest.jsonl");
    let opts = LoadOptions {
        limit: Some(2),
        ..LoadOptions::default()
    };
    assert_eq!(load(&path, &opts).unwrap().items.len(), 2);

    let bad = fixture(r#"{"id": "a", "image": "img/a.png", "policy": "L3", "label": "?"}"#);
    let err = load(&bad.path().join("manifest.jsonl"), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, EvalError::Empty { skipped: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("field `label`"), "{err}");
}
