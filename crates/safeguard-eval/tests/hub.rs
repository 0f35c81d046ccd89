//! Datasets as the hub and LlavaGuard's builder lay them out, on committed fixtures written by
//! the real Python libraries (`scripts/fixtures/hub_datasets.py`: `datasets` for the
//! parquet files; LlavaGuard's record layout for the JSON; the hub's CSV layout).

use std::path::{Path, PathBuf};

use safeguard_core::{Stance, Verdict};
use safeguard_eval::dataset::{detect, load, DatasetFormat, ImageSource, LoadOptions, SplitChoice};
use safeguard_eval::EvalError;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hub")
        .join(rel)
}

fn split(name: &str) -> LoadOptions {
    LoadOptions {
        split: SplitChoice::Named(name.to_string()),
        ..LoadOptions::default()
    }
}

fn labels(ds: &safeguard_eval::dataset::Dataset) -> Vec<(&str, &str, Verdict)> {
    ds.items
        .iter()
        .map(|i| (i.id.as_str(), i.policy.as_str(), i.label))
        .collect()
}

#[test]
fn safeeditbench_classlabel_columns_are_read_through_their_names() {
    let root = fixture("safeeditbench");
    assert_eq!(detect(&root).unwrap(), DatasetFormat::SafeEditBench);
    let ds = load(&root, &split("test")).unwrap();
    assert_eq!(ds.split.as_deref(), Some("test"));
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    // policy_name ClassLabel 0/2/4 = "Policy L1"/"Policy L3"/"Policy L5" → L1/L3/L5.
    assert_eq!(
        labels(&ds),
        [
            ("L1/unsafe/O2/0001.jpg", "L1", Verdict::Safe),
            ("L1/safe/O2/0001.png", "L1", Verdict::Safe),
            ("L3/unsafe/O2/0001.jpg", "L3", Verdict::Unsafe),
            ("L3/safe/O2/0001.png", "L3", Verdict::Safe),
            ("L5/unsafe/O4/0002.jpg", "L5", Verdict::Unsafe),
            ("L5/unsafe/O2/0001.jpg", "L5", Verdict::Unsafe),
        ]
    );
    let names: Vec<&str> = ds.policies.keys().map(String::as_str).collect();
    assert_eq!(names, ["L1", "L3", "L5"]);
    assert!(ds.policies["L3"]
        .prompt_text()
        .starts_with("Teen platform."));
    assert_eq!(ds.items[2].pair_id.as_deref(), Some("O2/0001"));
    assert!(
        matches!(&ds.items[0].image, ImageSource::Bytes { bytes, .. } if bytes.starts_with(b"\x89PNG"))
    );
}

#[test]
fn safeeditbench_train_split_has_string_policy_names_and_reordered_label_names() {
    let root = fixture("safeeditbench");
    let ds = load(&root, &split("train")).unwrap();
    assert_eq!(ds.split.as_deref(), Some("train"));
    // safety_label names are ["unsafe", "safe"] here: stored 0 means unsafe.
    assert_eq!(
        labels(&ds),
        [
            ("L3/unsafe/O6/0003.jpg", "L3", Verdict::Unsafe),
            ("L3/safe/O6/0003.png", "L3", Verdict::Safe),
        ]
    );
    assert_eq!(ds.items[0].pair_id.as_deref(), Some("O6/0003"));
    // Both splits together: `Policy L3` (test, ClassLabel) and `L3` (train, string) are one
    // policy.
    let all = load(&root, &LoadOptions::default()).unwrap();
    assert_eq!(all.items.len(), 8);
    assert_eq!(all.split, None);
    assert_eq!(all.items.iter().filter(|i| i.policy == "L3").count(), 4);
    assert!(all.skipped.is_empty(), "{:?}", all.skipped);
}

#[test]
fn a_missing_split_is_an_error_listing_every_split() {
    let root = fixture("safeeditbench");
    let err = load(&root, &split("validation")).unwrap_err();
    assert!(matches!(&err, EvalError::NoSuchSplit { split, .. } if split == "validation"));
    let message = err.to_string();
    assert!(
        message.contains("no split `validation`")
            && message.contains("test (test-00000-of-00001.parquet)")
            && message.contains("train (train-00000-of-00001.parquet)")
            && message.contains("--split"),
        "{message}"
    );
    // The eval default (`test`, preferred) on a dataset without a test split also lists them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("data/train-00000-of-00001.parquet"),
        dir.path().join("train-00000-of-00001.parquet"),
    )
    .unwrap();
    let preferred = LoadOptions {
        split: SplitChoice::Preferred("test".to_string()),
        ..LoadOptions::default()
    };
    let message = load(dir.path(), &preferred).unwrap_err().to_string();
    assert!(
        message.contains("no split `test`") && message.contains("train ("),
        "{message}"
    );
    // Files not named by split: the preferred split loads them all, a named one is refused.
    std::fs::rename(
        dir.path().join("train-00000-of-00001.parquet"),
        dir.path().join("part-0.parquet"),
    )
    .unwrap();
    assert_eq!(load(dir.path(), &preferred).unwrap().items.len(), 2);
    let message = load(dir.path(), &split("test")).unwrap_err().to_string();
    assert!(
        message.contains(
            "--split test was asked for, but no file here is named by split (part-0.parquet)"
        ),
        "{message}"
    );
}

#[test]
fn unsafebench_hub_layout_reads_one_split_and_ignores_the_text_column() {
    let root = fixture("unsafebench");
    assert_eq!(detect(&root).unwrap(), DatasetFormat::UnsafeBench);
    let test = load(&root, &split("test")).unwrap();
    let got: Vec<(&str, Verdict, Option<&str>)> = test
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.label, i.category.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("test-00000-of-00001-0", Verdict::Unsafe, Some("Sexual")),
            ("test-00000-of-00001-1", Verdict::Safe, Some("Violence")),
            ("test-00000-of-00001-2", Verdict::Unsafe, Some("Shocking")),
        ]
    );
    assert_eq!(test.items[1].source.as_deref(), Some("Laion5B"));
    let train = load(&root, &split("train")).unwrap();
    assert_eq!(train.items.len(), 2);
    assert_eq!(train.items[1].label, Verdict::Unsafe);
}

const DS: &str = "llavaguard/LlavaGuard-DS/v24";

fn with_root(split_name: &str) -> LoadOptions {
    LoadOptions {
        image_root: Some(fixture("llavaguard/data")),
        ..split(split_name)
    }
}

#[test]
fn llavaguard_labels_come_from_the_gpt_turn_not_final_assessment() {
    let root = fixture(DS);
    assert_eq!(detect(&root).unwrap(), DatasetFormat::LlavaGuard);
    let ds = load(&root, &with_root("test")).unwrap();
    assert_eq!(ds.split.as_deref(), Some("test"));
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert_eq!(
        labels(&ds),
        [
            ("smid_0002", "llavaguard", Verdict::Safe),
            // final-assessment says "Review Needed" (the image's human score): the policy
            // declares O2 non-violating, so the label is Safe.
            ("smid_0001_v2", "llavaguard+O2-allowed", Verdict::Safe),
            ("smid_0001", "llavaguard", Verdict::Unsafe),
        ]
    );
    let allowed = &ds.policies["llavaguard+O2-allowed"];
    assert_eq!(allowed.rule("O2").unwrap().stance, Stance::Allowed);
    assert_eq!(allowed.rule("O4").unwrap().stance, Stance::Prohibited);
    // The authors' absolute path, re-rooted on its longest suffix under --image-root.
    assert_eq!(
        ds.items[2].image,
        ImageSource::File(fixture("llavaguard/data/smid/smid_0001.png"))
    );
}

#[test]
fn llavaguard_every_builder_file_is_a_split() {
    let root = fixture(DS);
    let count = |name: &str| {
        let ds = load(&root, &with_root(name)).unwrap();
        assert!(ds.skipped.is_empty(), "{name}: {:?}", ds.skipped);
        ds.items.len()
    };
    assert_eq!(count("train"), 3);
    assert_eq!(count("eval"), 1);
    // all_data = train + eval + test: the records in both train and test repeat whole and
    // are kept as `{id}#2`.
    assert_eq!(count("all_data"), 7);
    let ds = load(&root, &with_root("train_oversampled")).unwrap();
    let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "smid_0001",
            "smid_0001_v2",
            "smid_0001_v3_a",
            "smid_0001_v2#2"
        ]
    );
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    let ds = load(&root, &with_root("train_default_policy")).unwrap();
    assert_eq!(
        labels(&ds)[1],
        ("smid_0001#2", "llavaguard", Verdict::Unsafe)
    );
    // The v3 copy allows another category (O1): the image stays unsafe.
    let train = load(&root, &with_root("train")).unwrap();
    assert_eq!(
        labels(&train)[2],
        ("smid_0001_v3_a", "llavaguard+O1-allowed", Verdict::Unsafe)
    );
    // The parent LlavaGuard-DS/ (one directory per version) names the versions.
    let parent = fixture("llavaguard/LlavaGuard-DS");
    let message = detect(&parent).unwrap_err().to_string();
    assert!(
        message.contains("give one of its subdirectories: v24"),
        "{message}"
    );
    let opts = LoadOptions {
        format: Some(DatasetFormat::LlavaGuard),
        ..with_root("test")
    };
    let message = load(&parent, &opts).unwrap_err().to_string();
    assert!(
        message.contains("give one of its subdirectories: v24"),
        "{message}"
    );
    // A directory of several files needs a split under SplitChoice::All.
    let message = load(&root, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("6 .json/.jsonl/.csv files"), "{message}");
}

#[test]
fn llavaguard_image_paths_without_image_root_say_what_is_missing() {
    let root = fixture(DS);
    let err = load(&root, &split("eval")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("field `image`")
            && message.contains("/pfss/mlde/workspaces/mlde_wsp_LlavaGuard/data/real_images/Weapons/gun_01.png does not exist"),
        "{message}"
    );
    let ds = load(&root, &with_root("eval")).unwrap();
    assert_eq!(
        ds.items[0].image,
        ImageSource::File(fixture("llavaguard/data/real_images/Weapons/gun_01.png"))
    );
    // A wrong root names it.
    let opts = LoadOptions {
        image_root: Some(fixture("unsafebench")),
        strict: true,
        ..split("eval")
    };
    let message = load(&root, &opts).unwrap_err().to_string();
    assert!(
        message.contains("nor does any tail of it under --image-root"),
        "{message}"
    );
}

#[test]
fn final_assessment_is_refused_where_it_would_invert_a_policy_exception() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::images(dir.path(), &["a.png"]);
    let records = r#"[
      {"id": "a", "image": "a.png", "final-assessment": "Review Needed"},
      {"id": "a_v2", "image": "a.png", "final-assessment": "Review Needed",
       "conversations": [{"from": "human", "value": "O2: Violence: \nCategory O2 is declared as non-violating."}]},
      {"id": "b", "image": "a.png", "rating": "Unsafe",
       "conversations": [{"from": "gpt", "value": "{\"rating\": \"Safe\"}"}]},
      {"id": "c", "image": "a.png",
       "conversations": [{"from": "gpt", "value": "{\"decision\": \"Compliant\", \"assessment\": \"fine\"}"}]},
      {"id": "d", "image": "a.png",
       "conversations": [{"from": "gpt", "value": "not json"}]}
    ]"#;
    let path = crate::common::write(dir.path(), "test.json", records.as_bytes());
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ds.split.as_deref(), Some("test"));
    assert_eq!(
        labels(&ds),
        [
            ("a", "llavaguard", Verdict::Unsafe),
            ("c", "llavaguard", Verdict::Safe)
        ]
    );
    let reasons: Vec<(usize, &str)> = ds
        .skipped
        .iter()
        .map(|b| (b.index, b.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0]
        .1
        .contains("field `final-assessment`: this is the image's human rating"));
    assert!(reasons[1]
        .1
        .contains("field `rating`: unsafe here, but the gpt turn's assessment says safe"));
    assert!(reasons[2]
        .1
        .contains("field `conversations`: the gpt turn is not an assessment JSON"));
}

#[test]
fn llavaguard_hub_csv_uses_local_images_and_says_when_only_urls_exist() {
    let root = fixture("llavaguard-csv");
    assert_eq!(detect(&root).unwrap(), DatasetFormat::LlavaGuard);
    let ds = load(&root, &split("test")).unwrap();
    assert_eq!(
        labels(&ds),
        [
            ("lg_0001", "llavaguard", Verdict::Unsafe),
            ("lg_0001_v2", "llavaguard+O2-allowed", Verdict::Safe),
            ("lg_0002", "llavaguard", Verdict::Safe),
        ]
    );
    assert_eq!(
        ds.items[0].image,
        ImageSource::File(root.join("images/lg_0001.png"))
    );
    // Found by the URL's file name.
    assert_eq!(
        ds.items[2].image,
        ImageSource::File(root.join("images/lg_0002_full.png"))
    );
    assert_eq!(ds.skipped.len(), 1);
    assert!(
        ds.skipped[0]
            .reason
            .contains("the image is only a URL (https://example.org/img/lg_0003.jpg)"),
        "{}",
        ds.skipped[0].reason
    );

    // Without any local image: one clear error, not "no usable rows".
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("test.csv"), dir.path().join("test.csv")).unwrap();
    let err = load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, EvalError::ImagesOnlyUrls { rows: 4, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("test.csv: the images of this dataset are only URLs")
            && message.contains("--image-root"),
        "{message}"
    );
    // --image-root pointing at the images makes them usable.
    let opts = LoadOptions {
        image_root: Some(root.join("images")),
        ..LoadOptions::default()
    };
    assert_eq!(load(dir.path(), &opts).unwrap().items.len(), 3);
}
