use std::path::{Path, PathBuf};

use proptest::prelude::*;
use safeguard_core::metrics::{self, BootstrapOptions, Confusion};
use safeguard_core::predictions::{self, Prediction};
use safeguard_core::{Error, Verdict};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

/// Every number in `want` (keys starting with `_` aside) must be within 1e-9 in `got`.
fn assert_close(want: &Value, got: &Value, path: &str) {
    match want {
        Value::Object(map) => {
            for (key, value) in map.iter().filter(|(k, _)| !k.starts_with('_')) {
                let sub = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key}: missing in {got}"));
                assert_close(value, sub, &format!("{path}.{key}"));
            }
        }
        Value::Number(n) => {
            let (w, g) = (n.as_f64().unwrap(), got.as_f64().unwrap());
            assert!((w - g).abs() <= 1e-9, "{path}: scikit-learn {w}, ours {g}");
        }
        other => assert_eq!(other, got, "{path}"),
    }
}

#[test]
fn metrics_equal_scikit_learn_on_every_fixture() {
    let mut sets = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(k) = name
            .strip_prefix("expected_")
            .and_then(|s| s.strip_suffix(".json"))
        else {
            continue;
        };
        let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for ext in ["csv", "jsonl"] {
            let rows = predictions::read_file(&fixtures().join(format!("rows_{k}.{ext}"))).unwrap();
            let got = serde_json::to_value(metrics::compute(&rows)).unwrap();
            assert_close(&want, &got, &format!("set {k} ({ext})"));
            // Scores only where every row has one; no extra per-policy keys otherwise.
            let has_scores = rows.iter().all(|r| r.p_unsafe.is_some());
            assert_eq!(
                got["pooled"].get("best_threshold").is_some(),
                has_scores && rows.iter().any(|r| r.label == Verdict::Unsafe)
            );
        }
        sets += 1;
    }
    assert!(sets >= 10, "only {sets} fixture sets found");
}

#[test]
fn report_json_has_exactly_the_documented_top_level_keys() {
    let rows = predictions::read_file(&fixtures().join("rows_0.csv")).unwrap();
    let value = serde_json::to_value(metrics::compute(&rows)).unwrap();
    let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["macro", "per_policy", "pooled"]);
    let entry = value["per_policy"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    for key in [
        "n",
        "tp",
        "fp",
        "fn",
        "tn",
        "precision",
        "recall",
        "f1",
        "accuracy",
        "score",
    ] {
        assert!(entry.get(key).is_some(), "per-policy entry lacks {key}");
    }
    for key in ["precision", "recall", "f1", "accuracy"] {
        assert!(value["pooled"].get(key).is_some(), "pooled lacks {key}");
    }
}

fn row(policy: &str, label: Verdict, pred: Verdict, p: Option<f64>) -> Prediction {
    Prediction {
        id: format!("{policy}-{label}-{pred}-{p:?}"),
        policy: policy.into(),
        label,
        pred,
        p_unsafe: p,
        output: None,
        latency_ms: None,
    }
}

#[test]
fn the_score_is_accuracy_when_a_policy_has_no_unsafe_label() {
    use Verdict::{Safe, Unsafe};
    let rows = vec![
        row("L1", Safe, Safe, None),
        row("L1", Safe, Unsafe, None),
        row("L1", Safe, Safe, None),
        row("L1", Safe, Safe, None),
        row("L5", Unsafe, Unsafe, None),
        row("L5", Safe, Unsafe, None),
    ];
    let report = metrics::compute(&rows);
    let l1 = &report.per_policy["L1"];
    assert_eq!((l1.f1, l1.accuracy, l1.score), (0.0, 0.75, 0.75));
    let l5 = &report.per_policy["L5"];
    assert!((l5.score - 2.0 / 3.0).abs() < 1e-12);
    assert!((report.macro_score - (0.75 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    // Pooled counts every row once: TP 1, FP 2, FN 0, TN 3.
    assert_eq!(
        report.pooled.confusion,
        Confusion {
            tp: 1,
            fp: 2,
            fn_: 0,
            tn: 3
        }
    );
    assert!(report.pooled.roc_auc.is_none());
}

#[test]
fn auc_and_threshold_on_a_hand_worked_example() {
    use Verdict::{Safe, Unsafe};
    // Positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4)(0.9>0.1)(0.4=0.4)(0.4>0.1).
    let scored = [(0.9, true), (0.4, true), (0.4, false), (0.1, false)];
    assert_eq!(metrics::roc_auc(&scored), Some(3.5 / 4.0));
    let best = metrics::best_threshold(&scored).unwrap();
    // t=0.9: F1 2/3; t=0.4: TP2 FP1 -> F1 0.8; t=0.1: TP2 FP2 -> 2/3.
    assert_eq!(best.threshold, 0.4);
    assert!((best.f1 - 0.8).abs() < 1e-12);
    assert_eq!(metrics::roc_auc(&[(0.3, true)]), None);
    let rows = [
        row("x", Unsafe, Safe, Some(0.9)),
        row("x", Safe, Safe, None),
    ];
    assert!(
        metrics::compute(&rows).pooled.roc_auc.is_none(),
        "a missing score disables AUC"
    );
}

#[test]
fn bootstrap_is_seeded_and_brackets_the_estimate() {
    let rows = predictions::read_file(&fixtures().join("rows_2.csv")).unwrap();
    let report = metrics::compute(&rows);
    let options = BootstrapOptions {
        resamples: 400,
        seed: 7,
        level: 0.9,
    };
    let a = metrics::bootstrap(&rows, &options);
    let b = metrics::bootstrap(&rows, &options);
    assert_eq!(a, b);
    let c = metrics::bootstrap(&rows, &BootstrapOptions { seed: 8, ..options });
    assert_ne!(a.macro_score, c.macro_score);
    assert!(a.macro_score[0] <= report.macro_score && report.macro_score <= a.macro_score[1]);
    assert!(a.pooled_f1[0] <= report.pooled.f1 && report.pooled.f1 <= a.pooled_f1[1]);
    assert_eq!(a.per_policy_score.len(), report.per_policy.len());
}

#[test]
fn percentile_interpolates_like_numpy() {
    let v = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(metrics::percentile(&v, 0.0), 1.0);
    assert_eq!(metrics::percentile(&v, 1.0), 4.0);
    assert!((metrics::percentile(&v, 0.025) - 1.075).abs() < 1e-12);
    assert_eq!(metrics::percentile(&v, 0.5), 2.5);
}

fn err_text(result: Result<Vec<Prediction>, Error>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn bad_rows_name_the_line_and_field() {
    let csv = "id,policy,label\n1,L1,safe\n";
    let e = err_text(predictions::parse_csv(csv));
    assert!(
        e.contains("line 1") && e.contains("missing column \"pred\""),
        "{e}"
    );
    let csv = "id,policy,label,pred\n1,L1,safe,safe\n2,L1,maybe,safe\n";
    let e = err_text(predictions::parse_csv(csv));
    assert!(
        e.contains("line 3") && e.contains("\"label\"") && e.contains("maybe"),
        "{e}"
    );
    let csv = "id,policy,label,pred,p_unsafe\n1,L1,safe,safe,1.5\n";
    let e = err_text(predictions::parse_csv(csv));
    assert!(e.contains("line 2") && e.contains("p_unsafe"), "{e}");
    let jsonl = "{\"id\":1,\"policy\":\"L1\",\"label\":0,\"pred\":1}\n\n{\"id\":2,\"policy\":\"L1\",\"label\":0}\n";
    let e = err_text(predictions::parse_jsonl(jsonl));
    assert!(
        e.contains("line 3") && e.contains("missing field \"pred\""),
        "{e}"
    );
    let e = err_text(predictions::parse_jsonl("{\"id\": 1,\n"));
    assert!(e.contains("line 1") && e.contains("invalid JSON"), "{e}");
    let csv = "id,policy,label,pred\n1,L1,safe,safe\n2,,safe,safe\n";
    let e = err_text(predictions::parse_csv(csv));
    assert!(
        e.contains("line 3") && e.contains("\"policy\" is empty"),
        "{e}"
    );
    let jsonl = "{\"id\":\"\",\"policy\":\"L1\",\"label\":0,\"pred\":1}\n";
    let e = err_text(predictions::parse_jsonl(jsonl));
    assert!(e.contains("line 1") && e.contains("\"id\" is empty"), "{e}");
    assert!(matches!(
        predictions::parse_jsonl("\n\n"),
        Err(Error::NoPredictions)
    ));
    assert!(matches!(
        predictions::parse_csv("id,policy,label,pred\n"),
        Err(Error::NoPredictions)
    ));
    assert!(matches!(
        predictions::parse_csv(""),
        Err(Error::Predictions { line: 1, .. })
    ));
}

#[test]
fn numeric_labels_and_ids_are_accepted() {
    let rows = predictions::parse_jsonl(
        "{\"id\":7,\"policy\":\"L2\",\"label\":1,\"pred\":\"safe\",\"p_unsafe\":0.25}\n",
    )
    .unwrap();
    assert_eq!(rows[0].id, "7");
    assert_eq!(
        (rows[0].label, rows[0].pred),
        (Verdict::Unsafe, Verdict::Safe)
    );
    assert_eq!(rows[0].p_unsafe, Some(0.25));
}

fn verdict_strategy() -> impl Strategy<Value = Verdict> {
    prop_oneof![Just(Verdict::Safe), Just(Verdict::Unsafe)]
}

proptest! {
    #[test]
    fn ratios_stay_in_the_unit_interval(
        pairs in proptest::collection::vec((verdict_strategy(), verdict_strategy(), 0u8..=4), 1..60)
    ) {
        let rows: Vec<Prediction> = pairs
            .iter()
            .enumerate()
            .map(|(i, (l, p, g))| Prediction {
                id: i.to_string(),
                policy: format!("P{g}"),
                label: *l,
                pred: *p,
                p_unsafe: Some(f64::from(*g) / 4.0),
                output: None,
                latency_ms: None,
            })
            .collect();
        let report = metrics::compute(&rows);
        for m in report.per_policy.values().chain([&report.pooled]) {
            for x in [m.precision, m.recall, m.f1, m.accuracy, m.score, m.balanced_accuracy] {
                prop_assert!((0.0..=1.0).contains(&x));
            }
            if let Some(auc) = m.roc_auc {
                prop_assert!((0.0..=1.0).contains(&auc));
            }
        }
        prop_assert!((0.0..=1.0).contains(&report.macro_score));
        prop_assert_eq!(report.pooled.n as usize, rows.len());
    }

    #[test]
    fn flipping_scores_flips_auc(scores in proptest::collection::vec((0u8..10, any::<bool>()), 2..40)) {
        let scored: Vec<(f64, bool)> = scores.iter().map(|(s, y)| (f64::from(*s), *y)).collect();
        let flipped: Vec<(f64, bool)> = scored.iter().map(|(s, y)| (-s, *y)).collect();
        match (metrics::roc_auc(&scored), metrics::roc_auc(&flipped)) {
            (Some(a), Some(b)) => prop_assert!((a + b - 1.0).abs() < 1e-12),
            (None, None) => {}
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn unassessed_rows_are_kept_apart() {
    let jsonl = "{\"id\":1,\"policy\":\"L1\",\"label\":0,\"pred\":1}\n\
                 {\"id\":2,\"policy\":\"L1\",\"label\":1,\"pred\":null,\"error\":\"timeout\"}\n\
                 \n\
                 {\"id\":3,\"policy\":\"L2\",\"label\":1,\"pred\":null}\n";
    let file = predictions::parse_jsonl_all(jsonl).unwrap();
    assert_eq!(file.rows.len(), 1);
    assert_eq!(file.rows[0].id, "1");
    let got: Vec<(usize, &str, &str, Option<&str>)> = file
        .unassessed
        .iter()
        .map(|u| (u.line, u.id.as_str(), u.policy.as_str(), u.error.as_deref()))
        .collect();
    assert_eq!(got, [(2, "2", "L1", Some("timeout")), (4, "3", "L2", None)]);
    // The plain reader refuses them, naming the line.
    let e = err_text(predictions::parse_jsonl(jsonl));
    assert!(
        e.contains("line 2") && e.contains("\"pred\" is null"),
        "{e}"
    );

    let csv = "id,policy,label,pred\n1,L1,safe,safe\n2,L1,unsafe,\n";
    let file = predictions::parse_csv_all(csv).unwrap();
    assert_eq!((file.rows.len(), file.unassessed.len()), (1, 1));
    assert_eq!(file.unassessed[0].line, 3);

    // Nothing assessed: an empty report, not an error.
    let only =
        predictions::parse_jsonl_all("{\"id\":1,\"policy\":\"L1\",\"label\":0,\"pred\":null}\n")
            .unwrap();
    assert!(only.rows.is_empty());
    assert!(safeguard_core::metrics::compute(&only.rows).is_empty());
    assert!(!safeguard_core::metrics::compute(&file.rows).is_empty());
}
