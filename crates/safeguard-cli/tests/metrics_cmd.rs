use serde_json::Value;

use crate::cli_common::{fails, metrics_fixtures, ok};

fn close(a: &Value, b: &Value) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-9
}

#[test]
fn json_output_matches_scikit_learn() {
    for k in [0, 1] {
        let rows = metrics_fixtures().join(format!("rows_{k}.csv"));
        let got: Value =
            serde_json::from_str(&ok(&["metrics", rows.to_str().unwrap(), "--json"])).unwrap();
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(metrics_fixtures().join(format!("expected_{k}.json")))
                .unwrap(),
        )
        .unwrap();
        assert!(close(&got["macro"], &want["macro"]));
        for key in ["precision", "recall", "f1", "accuracy"] {
            assert!(
                close(&got["pooled"][key], &want["pooled"][key]),
                "pooled {key}"
            );
        }
        for (policy, metrics) in want["per_policy"].as_object().unwrap() {
            for key in ["n", "tp", "fp", "fn", "tn", "f1", "score"] {
                assert!(
                    close(&got["per_policy"][policy][key], &metrics[key]),
                    "{policy} {key}"
                );
            }
        }
        assert!(got.get("bootstrap").is_none());
    }
}

#[test]
fn table_output_lists_policies_and_the_macro_score() {
    let rows = metrics_fixtures().join("rows_1.jsonl");
    let table = ok(&["metrics", rows.to_str().unwrap()]);
    assert!(table.starts_with("policy"), "{table}");
    assert!(
        table.contains("(pooled)") && table.contains("macro score"),
        "{table}"
    );
}

#[test]
fn bootstrap_adds_intervals() {
    let rows = metrics_fixtures().join("rows_3.csv");
    let args = [
        "metrics",
        rows.to_str().unwrap(),
        "--json",
        "--bootstrap",
        "200",
        "--seed",
        "3",
    ];
    let a: Value = serde_json::from_str(&ok(&args)).unwrap();
    let b: Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(a["bootstrap"], b["bootstrap"]);
    assert_eq!(a["bootstrap"]["resamples"], 200);
    let [lo, hi] =
        [&a["bootstrap"]["macro"][0], &a["bootstrap"]["macro"][1]].map(|v| v.as_f64().unwrap());
    assert!(lo <= a["macro"].as_f64().unwrap() && a["macro"].as_f64().unwrap() <= hi);
}

#[test]
fn bad_input_exits_2_naming_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let missing = write("missing.csv", "id,policy,pred\n1,L1,safe\n");
    let err = fails(&["metrics", &missing, "--json"]);
    assert!(
        err.contains("missing.csv") && err.contains("line 1") && err.contains("\"label\""),
        "{err}"
    );

    let unknown = write("unknown.jsonl", "{\"id\":1,\"policy\":\"L1\",\"label\":\"safe\",\"pred\":\"safe\"}\n{\"id\":2,\"policy\":\"L1\",\"label\":\"bad\",\"pred\":\"safe\"}\n");
    let err = fails(&["metrics", &unknown]);
    assert!(
        err.contains("line 2") && err.contains("\"label\"") && err.contains("bad"),
        "{err}"
    );

    let empty = write("empty.csv", "");
    let err = fails(&["metrics", &empty]);
    assert!(err.contains("empty.csv") && err.contains("line 1"), "{err}");

    let header_only = write("header.jsonl", "\n");
    let err = fails(&["metrics", &header_only]);
    assert!(err.contains("no prediction rows"), "{err}");

    let err = fails(&["metrics", "/nonexistent/rows.csv"]);
    assert!(err.contains("/nonexistent/rows.csv"), "{err}");
}

#[test]
fn unassessed_rows_of_an_eval_run_are_counted_apart() {
    let dir = tempfile::tempdir().unwrap();
    // As `safeguard eval` writes predictions.jsonl: `pred` null for an unassessed item, with
    // `error` for a failed one.
    let rows = "{\"id\":\"a\",\"policy\":\"L1\",\"label\":\"unsafe\",\"pred\":\"unsafe\",\"p_unsafe\":0.9}\n\
                {\"id\":\"b\",\"policy\":\"L1\",\"label\":\"safe\",\"pred\":null,\"note\":\"unparsable\"}\n\
                {\"id\":\"c\",\"policy\":\"L1\",\"label\":\"safe\",\"pred\":\"unsafe\"}\n\
                {\"id\":\"d\",\"policy\":\"L2\",\"label\":\"safe\",\"pred\":null,\"error\":\"image: corrupt\"}\n";
    let path = dir.path().join("predictions.jsonl");
    std::fs::write(&path, rows).unwrap();
    let path = path.to_str().unwrap();
    let table = ok(&["metrics", path]);
    assert!(
        table.contains(
            "not in the metrics: 2 of 4 rows have no verdict, pred null (1 unassessed, 1 failed)"
        ),
        "{table}"
    );
    assert!(!table.contains("\nL2 "), "L2 has no assessed row: {table}");
    let json: Value = serde_json::from_str(&ok(&["metrics", path, "--json"])).unwrap();
    assert_eq!(json["assessed"], 2);
    assert_eq!(json["unassessed"], 1);
    assert_eq!(json["errors"], 1);
    assert_eq!(json["pooled"]["n"], 2);

    let none = dir.path().join("none.jsonl");
    std::fs::write(
        &none,
        "{\"id\":\"b\",\"policy\":\"L1\",\"label\":\"safe\",\"pred\":null}\n",
    )
    .unwrap();
    let none = none.to_str().unwrap();
    let out = ok(&["metrics", none, "--bootstrap", "10"]);
    assert!(
        out.contains("no item was assessed: none of the 1 rows has a verdict (1 unassessed, 0 failed); no metrics"),
        "{out}"
    );
    assert!(!out.contains("macro score"), "{out}");
    let json: Value = serde_json::from_str(&ok(&["metrics", none, "--json"])).unwrap();
    assert!(json["macro"].is_null(), "{json}");
    assert_eq!(json["assessed"], 0);
}
