//! P(unsafe) from served logprobs, and the text fallback.

use safeguard_core::guard::Guard;
use safeguard_core::{Assessment, Format};

use crate::common::{guard, image, request, text_policy, MockServer, Reply};

fn softmax(lu: f64, ls: f64) -> f64 {
    lu.exp() / (lu.exp() + ls.exp())
}

#[test]
fn p_unsafe_is_the_softmax_of_the_served_logprobs() {
    let server = MockServer::start(|_, _| Reply::scores(-0.3, -1.5));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    let expected = softmax(-0.3, -1.5);
    let p = j.p_unsafe.unwrap();
    assert!((p - expected).abs() < 1e-9, "{p} vs {expected}");
    assert_eq!(j.verdict, Assessment::Unsafe);
    assert_eq!(j.raw_output.as_deref(), Some("unsafe"));
    assert_eq!(j.backend, "remote");
    assert_eq!(g.name(), "remote");
    assert!(j.latency_ms > 0.0);
    assert!(j.note.is_none(), "{:?}", j.note);
    assert!(j.rules.is_empty() && j.rules_hit.is_empty());
    assert_eq!(server.hits(), 1);
    server.assert_well_formed();
}

#[test]
fn the_threshold_decides_and_is_inclusive() {
    let server = MockServer::start(|_, _| Reply::scores(-1.5, -0.3));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("coffee.jpg"), text_policy());
    let p = softmax(-1.5, -0.3);
    let mut req = request(&img, &policy, Format::Verdict);
    let j = g.judge(&[req]).remove(0).unwrap();
    assert_eq!(j.verdict, Assessment::Safe, "p = {:?}", j.p_unsafe);
    req.threshold = p;
    assert_eq!(
        g.judge(&[req]).remove(0).unwrap().verdict,
        Assessment::Unsafe
    );
    req.threshold = p + 1e-6;
    assert_eq!(g.judge(&[req]).remove(0).unwrap().verdict, Assessment::Safe);
}

#[test]
fn tokens_of_one_word_are_log_sum_exped() {
    let server = MockServer::start(|_, _| {
        Reply::Logprobs(vec![
            ("safe", (0.4f64).ln()),
            ("unsafe", (0.3f64).ln()),
            (" Safe", (0.1f64).ln()),
            (" UNSAFE", (0.1f64).ln()),
            ("I", (0.1f64).ln()),
        ])
    });
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    assert!(
        (j.p_unsafe.unwrap() - 0.4 / 0.9).abs() < 1e-9,
        "{:?}",
        j.p_unsafe
    );
    assert_eq!(j.verdict, Assessment::Safe);
    assert_eq!(j.raw_output.as_deref(), Some("safe"));
}

#[test]
fn a_missing_word_gives_a_bound_and_says_so() {
    let server = MockServer::start(|_, _| {
        Reply::Logprobs(vec![("unsafe", -0.05), ("I", -4.0), ("The", -7.5)])
    });
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    let expected = softmax(-0.05, -7.5);
    assert!((j.p_unsafe.unwrap() - expected).abs() < 1e-9);
    let note = j.note.unwrap();
    assert!(
        note.contains("\"safe\" was not among") && note.contains("lower bound"),
        "{note}"
    );
}

#[test]
fn without_logprobs_the_text_is_parsed_and_there_is_no_score() {
    let server = MockServer::start(|_, _| Reply::Text("Unsafe".into()));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Unsafe);
    assert_eq!(j.p_unsafe, None);
    assert!(j.note.unwrap().contains("no logprobs"));
    server.assert_well_formed();
}

#[test]
fn logprobs_without_either_word_fall_back_to_the_text() {
    let server = MockServer::start(|_, _| Reply::Logprobs(vec![("The", -0.1), ("I", -2.5)]));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let err = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    match &err {
        safeguard_core::Error::Unparsable {
            backend, output, ..
        } => {
            assert_eq!(backend, "remote");
            assert_eq!(output, "The");
        }
        other => panic!("expected Unparsable, got {other:?}"),
    }
}
