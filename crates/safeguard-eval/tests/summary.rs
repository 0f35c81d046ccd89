//! The eval summary line: a score when some item was assessed, a plain statement when none.

use safeguard_eval::runner::{summarize, PredictionRow};

fn rows(lines: &[&str]) -> Vec<PredictionRow> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_eval_with_nothing_assessed_says_so_instead_of_a_zero_score() {
    let none = summarize(&rows(&[
        r#"{"id":"a","policy":"L1","label":"unsafe","pred":null}"#,
        r#"{"id":"b","policy":"L1","label":"safe","pred":null,"error":"image: corrupt"}"#,
    ]));
    let line = none.score_line();
    assert_eq!(
        line,
        "no item was assessed (1 unassessed, 1 errors): no score"
    );
    assert!(!line.contains("macro score"));

    let some = summarize(&rows(&[
        r#"{"id":"a","policy":"L1","label":"unsafe","pred":"unsafe"}"#,
        r#"{"id":"b","policy":"L1","label":"safe","pred":null}"#,
    ]));
    let line = some.score_line();
    assert!(
        line.starts_with("macro score 1.000; pooled F1 1.000")
            && line.ends_with("unassessed 1, errors 0"),
        "{line}"
    );
}
