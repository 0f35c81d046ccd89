//! Request shape, images, API keys, and the generating formats.

use safeguard_core::guard::Guard;
use safeguard_core::prompt::{DEFAULT_QUESTION, REASONING_SYSTEM_PROMPT};
use safeguard_core::{Assessment, Error, Format, NoVerdict};

use crate::common::{guard, image, request, rules_policy, text_policy, MockServer, Reply};

#[test]
fn the_request_carries_system_policy_image_and_question() {
    let server = MockServer::start(|_, _| Reply::scores(-2.0, -0.2));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    g.judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    server.assert_well_formed();
    let seen = server.seen().remove(0);
    assert_eq!(seen.system, Format::Verdict.system_prompt());
    assert_eq!(
        seen.policy_block,
        format!("Safety policy:\n{}\n\n", policy.prompt_text())
    );
    assert_eq!(seen.mime, "image/jpeg");
    assert_eq!(seen.image, img, "the data URL decodes to the same bytes");
    assert_eq!(
        seen.question,
        format!("{DEFAULT_QUESTION} {}", Format::Verdict.instruction())
    );
    assert_eq!(seen.body["model"], "Qwen/Qwen2.5-VL-7B-Instruct");
    assert!(seen.score_mode());
    assert_eq!(seen.auth, None);
}

#[test]
fn other_image_types_are_sent_with_their_mime() {
    let server = MockServer::start(|_, _| Reply::scores(-2.0, -0.2));
    let g = guard(&[&server.url], |_| {});
    let policy = text_policy();
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
    let webp = b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0".to_vec();
    let results = g.judge(&[
        request(&png, &policy, Format::Verdict),
        request(&webp, &policy, Format::Verdict),
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut mimes: Vec<String> = server.seen().into_iter().map(|s| s.mime).collect();
    mimes.sort();
    assert_eq!(mimes, ["image/png", "image/webp"]);
}

#[test]
fn unknown_image_bytes_are_refused_before_any_request() {
    let server = MockServer::start(|_, _| Reply::scores(-2.0, -0.2));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let bad = b"%PDF-1.7 not an image".to_vec();
    let results = g.judge(&[request(&bad, &policy, Format::Verdict)]);
    assert!(
        matches!(&results[0], Err(Error::InvalidImage { message }) if message.contains("unrecognised image format")),
        "{results:?}"
    );
    assert_eq!(server.hits(), 0);
    // In a mixed batch only the good image is sent.
    let results = g.judge(&[
        request(&bad, &policy, Format::Verdict),
        request(&img, &policy, Format::Verdict),
    ]);
    assert!(results[0].is_err() && results[1].is_ok(), "{results:?}");
    assert_eq!(server.hits(), 1);
}

#[test]
fn the_api_key_is_sent_as_bearer() {
    let server = MockServer::start(|seen, _| match seen.auth.as_deref() {
        Some("Bearer sk-test-123") => Reply::scores(-2.0, -0.2),
        _ => Reply::status(401, "missing or invalid API key"),
    });
    let (img, policy) = (image("chelsea.jpg"), text_policy());

    let without = guard(&[&server.url], |_| {});
    let err = without
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Remote {
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("SAFEGUARD_API_KEY"), "{err}");
    assert_eq!(server.hits(), 1, "401 is not retried");

    let wrong = guard(&[&server.url], |c| c.api_key = Some("sk-wrong-999".into()));
    let err = wrong
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    assert!(
        !err.to_string().contains("sk-wrong-999") && !format!("{err:?}").contains("sk-wrong-999")
    );
    assert!(!format!("{wrong:?}").contains("sk-wrong-999"));

    let with = guard(&[&server.url], |c| c.api_key = Some("sk-test-123".into()));
    let j = with
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Safe);
    assert_eq!(
        server.seen().last().unwrap().auth.as_deref(),
        Some("Bearer sk-test-123")
    );
}

#[test]
fn reasoning_answers_are_parsed_with_their_rationale() {
    let answer =
        "<think>The image shows a cat on a sofa; no rule applies.</think>\n<answer>yes</answer>";
    let server = MockServer::start(move |_, _| Reply::Text(answer.into()));
    let g = guard(&[&server.url], |c| c.max_tokens_reason = 256);
    let (img, policy) = (image("chelsea.jpg"), rules_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Reasoning)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Safe);
    assert_eq!(j.p_unsafe, None);
    assert_eq!(
        j.rationale.as_deref(),
        Some("The image shows a cat on a sofa; no rule applies.")
    );
    assert_eq!(j.raw_output.as_deref(), Some(answer));
    assert_eq!(
        server.hits(),
        1,
        "rules are not asked one by one when generating"
    );
    let seen = server.seen().remove(0);
    assert_eq!(seen.system, REASONING_SYSTEM_PROMPT);
    assert_eq!(seen.body["max_tokens"], 256);
    assert!(seen.body.get("logprobs").is_none());
    assert!(seen.question.ends_with(Format::Reasoning.instruction()));
    server.assert_well_formed();
}

#[test]
fn json_answers_name_the_rule_hit() {
    let server = MockServer::start(|_, _| {
        Reply::Text("```json\n{\"rating\": \"Unsafe\", \"category\": \"weapons: Weapons\", \"rationale\": \"A rifle is shown.\"}\n```".into())
    });
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("astronaut.jpg"), rules_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Json)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Unsafe);
    assert_eq!(j.rules_hit, ["weapons"]);
    assert_eq!(j.rationale.as_deref(), Some("A rifle is shown."));
}

#[test]
fn unparsable_output_is_an_error_with_the_output() {
    let server = MockServer::start(|_, _| Reply::Text("I'm sorry, I can't help with that.".into()));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let err = g
        .judge(&[request(&img, &policy, Format::Reasoning)])
        .remove(0)
        .unwrap_err();
    match &err {
        Error::Unparsable {
            backend,
            reason,
            output,
        } => {
            assert_eq!(backend, "remote");
            assert_eq!(*reason, NoVerdict::MissingAnswer);
            assert_eq!(output, "I'm sorry, I can't help with that.");
        }
        other => panic!("expected Unparsable, got {other:?}"),
    }
    assert!(err.to_string().contains("no <answer>"), "{err}");
}

#[test]
fn bad_configurations_are_refused() {
    use safeguard_remote::{RemoteConfig, RemoteGuard};
    let cfg =
        |urls: &[&str]| RemoteConfig::new(urls.iter().map(|s| s.to_string()).collect(), "m".into());
    assert!(RemoteGuard::new(cfg(&[])).is_err());
    let err = RemoteGuard::new(cfg(&["http://ok/v1", "localhost:8000"])).unwrap_err();
    assert!(err.to_string().contains("localhost:8000"), "{err}");
    assert!(RemoteGuard::new(cfg(&["http://127.0.0.1:8000/v1"])).is_ok());
}
