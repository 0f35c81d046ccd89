//! The LlavaGuard annotation loader and its per-sample policy switches.

use safeguard_core::{Stance, Verdict};
use safeguard_eval::dataset::{detect, load, DatasetFormat, LoadOptions};

use crate::common::{images, write};

const ANNOTATIONS: &str = r#"[
  {"id": "s1", "image": "imgs/1.png", "rating": "Unsafe", "category": "O4: Nudity Content", "rationale": "…"},
  {"id": "s1_v2", "image": "imgs/1.png", "rating": "Safe", "category": "O4: Nudity Content",
   "allowed": ["O4"]},
  {"id": "s2", "image": "imgs/2.png", "rating": "safe", "category": "NA: None applying",
   "policy": {"O9": "allowed", "O4": "non-violating", "O1": "prohibited"}},
  {"id": 3, "image": "imgs/2.png", "rating": "Safe",
   "conversations": [{"from": "human", "value": "O4: Nudity Content: \nCategory O4 is declared as non-violating. Therefore ...\nO2: Violence: \nShould not: ..."},
                     {"from": "gpt", "value": "{\"rating\": \"Safe\"}"}]},
  {"id": "s4", "image": "imgs/2.png", "final-assessment": "Review Needed"},
  {"id": "s5", "image": "imgs/2.png", "rating": "Unsafe", "allowed": ["O12"]},
  {"id": "s6", "image": "imgs/2.png", "rating": "Borderline"},
  {"id": "s7", "image": "imgs/2.png", "rating": "Safe", "policy": 4}
]"#;

#[test]
fn switch_sets_become_named_llavaguard_policies() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path(), &["imgs/1.png", "imgs/2.png"]);
    let path = write(dir.path(), "annotations.json", ANNOTATIONS.as_bytes());
    assert_eq!(detect(&path).unwrap(), DatasetFormat::LlavaGuard);
    let ds = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(ds.format, DatasetFormat::LlavaGuard);

    let got: Vec<(&str, &str, Verdict)> = ds
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.policy.as_str(), i.label))
        .collect();
    assert_eq!(
        got,
        [
            ("s1", "llavaguard", Verdict::Unsafe),
            ("s1_v2", "llavaguard+O4-allowed", Verdict::Safe),
            ("s2", "llavaguard+O4-allowed+O9-allowed", Verdict::Safe),
            ("3", "llavaguard+O4-allowed", Verdict::Safe),
            ("s4", "llavaguard", Verdict::Unsafe),
        ]
    );
    assert_eq!(ds.items[0].category.as_deref(), Some("O4: Nudity Content"));

    let names: Vec<&str> = ds.policies.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "llavaguard",
            "llavaguard+O4-allowed",
            "llavaguard+O4-allowed+O9-allowed"
        ]
    );
    let both = &ds.policies["llavaguard+O4-allowed+O9-allowed"];
    assert_eq!(both.name, "llavaguard+O4-allowed+O9-allowed");
    assert_eq!(both.rule("O4").unwrap().stance, Stance::Allowed);
    assert_eq!(both.rule("O9").unwrap().stance, Stance::Allowed);
    assert_eq!(both.rule("O1").unwrap().stance, Stance::Prohibited);
    assert_eq!(ds.policies["llavaguard"].allowed().count(), 0);

    let skipped: Vec<(usize, &str)> = ds
        .skipped
        .iter()
        .map(|b| (b.index, b.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert_eq!(skipped[0].0, 5);
    assert!(
        skipped[0].1.contains("cannot allow category O12"),
        "{}",
        skipped[0].1
    );
    assert_eq!(skipped[1].0, 6);
    assert!(skipped[1].1.contains("field `rating`") && skipped[1].1.contains("Borderline"));
    assert_eq!(skipped[2].0, 7);
    assert!(skipped[2]
        .1
        .contains("field `policy`: expected the policy prompt"));
}

#[test]
fn json_lines_and_missing_ids() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path(), &["a.png"]);
    let lines = "{\"image\": \"a.png\", \"rating\": \"Unsafe\"}\n\
                 {\"image\": \"a.png\", \"rating\": \"Safe\", \"allowed\": [\"O2: Violence\"]}\n\
                 {\"image\": \"b.png\", \"rating\": \"Safe\"}\n";
    let path = write(dir.path(), "bench.jsonl", lines.as_bytes());
    assert_eq!(detect(&path).unwrap(), DatasetFormat::LlavaGuard);
    let ds = load(&path, &LoadOptions::default()).unwrap();
    let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a.png", "a.png@llavaguard+O2-allowed"]);
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.skipped[0].index, 2);
    assert!(ds.skipped[0].reason.contains("b.png does not exist"));
}
