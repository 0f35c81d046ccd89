//! A structured policy in score mode: each prohibited rule is asked on its own.

use safeguard_core::guard::{Guard, RuleStatus};
use safeguard_core::prompt::{rule_question, DEFAULT_QUESTION};
use safeguard_core::{Assessment, Format, Stance};

use crate::common::{guard, image, request, rules_policy, MockServer, Reply};

#[test]
fn prohibited_rules_are_scored_and_hit() {
    let server = MockServer::start(|seen, _| {
        if seen.question.contains("[weapons]") {
            Reply::scores(-0.1, -2.5)
        } else if seen.question.contains("[gore]") {
            Reply::scores(-3.0, -0.05)
        } else {
            Reply::scores(-0.4, -1.1)
        }
    });
    let g = guard(&[&server.url], |c| c.concurrency = 3);
    let (img, policy) = (image("astronaut.jpg"), rules_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();

    let softmax = |lu: f64, ls: f64| lu.exp() / (lu.exp() + ls.exp());
    assert_eq!(j.verdict, Assessment::Unsafe);
    assert!((j.p_unsafe.unwrap() - softmax(-0.4, -1.1)).abs() < 1e-9);
    assert_eq!(j.rules_hit, ["weapons"]);
    assert_eq!(
        j.rules.len(),
        2,
        "allowed rules are not asked: {:?}",
        j.rules
    );
    let weapons = &j.rules[0];
    assert_eq!(
        (weapons.id.as_str(), weapons.stance, weapons.status),
        ("weapons", Stance::Prohibited, RuleStatus::Hit)
    );
    assert!((weapons.score.unwrap() - softmax(-0.1, -2.5)).abs() < 1e-9);
    let gore = &j.rules[1];
    assert_eq!((gore.id.as_str(), gore.status), ("gore", RuleStatus::Clear));
    assert!((gore.score.unwrap() - softmax(-3.0, -0.05)).abs() < 1e-9);

    // Three questions, same policy block and image, none about the allowed rule.
    assert_eq!(server.hits(), 3);
    server.assert_well_formed();
    let seen = server.seen();
    let instruction = Format::Verdict.instruction();
    let mut questions: Vec<String> = seen.iter().map(|s| s.question.clone()).collect();
    questions.sort();
    let mut expected = vec![
        format!("{DEFAULT_QUESTION} {instruction}"),
        format!(
            "{} {instruction}",
            rule_question(policy.rule("weapons").unwrap())
        ),
        format!(
            "{} {instruction}",
            rule_question(policy.rule("gore").unwrap())
        ),
    ];
    expected.sort();
    assert_eq!(questions, expected);
    assert!(seen
        .iter()
        .all(|s| s.image == img && s.policy_block == seen[0].policy_block));
    assert!(!questions.iter().any(|q| q.contains("[art]")));
}

#[test]
fn rules_hit_below_a_safe_whole_policy_are_noted() {
    let server = MockServer::start(|seen, _| {
        if seen.question.contains("[gore]") {
            Reply::scores(-0.1, -2.5)
        } else {
            Reply::scores(-2.5, -0.1)
        }
    });
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("coffee.jpg"), rules_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Safe);
    assert_eq!(j.rules_hit, ["gore"]);
    assert!(j.note.unwrap().contains("gore"));
}

#[test]
fn a_failing_rule_question_leaves_that_rule_unassessed() {
    let server = MockServer::start(|seen, _| {
        if seen.question.contains("[gore]") {
            Reply::status(400, "rule question refused")
        } else {
            Reply::scores(-2.5, -0.1)
        }
    });
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("coffee.jpg"), rules_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Safe);
    let gore = j.rules.iter().find(|r| r.id == "gore").unwrap();
    assert_eq!(gore.status, RuleStatus::Unassessed);
    let note = j.note.unwrap();
    assert!(
        note.contains("rules not assessed: gore") && note.contains("rule question refused"),
        "{note}"
    );
}

#[test]
fn batches_of_structured_requests_run_concurrently() {
    let server = MockServer::start(|_, _| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        Reply::scores(-2.5, -0.1)
    });
    let g = guard(&[&server.url], |c| c.concurrency = 6);
    let (img, policy) = (image("coffee.jpg"), rules_policy());
    let start = std::time::Instant::now();
    let results = g.judge(&[
        request(&img, &policy, Format::Verdict),
        request(&img, &policy, Format::Verdict),
    ]);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(server.hits(), 6);
    assert!(
        start.elapsed() < std::time::Duration::from_millis(1000),
        "6 calls of 200 ms in parallel took {:?}",
        start.elapsed()
    );
}
