//! Retries: transient failures are retried with backoff; others fail at once, clearly.

use std::time::{Duration, Instant};

use safeguard_core::guard::Guard;
use safeguard_core::{Assessment, Error, Format};

use crate::common::{guard, image, request, text_policy, MockServer, Reply};

#[test]
fn transient_5xx_are_retried_until_success() {
    let server = MockServer::start(|_, n| match n {
        0 => Reply::status(500, "internal error"),
        1 => Reply::status(503, "engine overloaded"),
        _ => Reply::scores(-0.2, -2.0),
    });
    let g = guard(&[&server.url], |c| c.max_retries = 3);
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Unsafe);
    assert_eq!(server.hits(), 3);
    server.assert_well_formed();
}

#[test]
fn too_many_5xx_fail_naming_the_status_and_the_attempts() {
    let server = MockServer::start(|_, _| Reply::status(502, "bad gateway"));
    let g = guard(&[&server.url], |c| c.max_retries = 2);
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let err = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    let Error::Remote { status, reason, .. } = &err else {
        panic!("expected Remote, got {err:?}")
    };
    assert_eq!(*status, Some(502));
    assert!(reason.contains("HTTP 502: bad gateway"), "{reason}");
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert_eq!(server.hits(), 3);
}

#[test]
fn retry_after_is_honoured() {
    let server = MockServer::start(|_, n| match n {
        0 => Reply::Status {
            code: 429,
            body: r#"{"error":{"message":"slow down"}}"#.into(),
            retry_after: Some(1),
        },
        _ => Reply::scores(-2.0, -0.2),
    });
    let g = guard(&[&server.url], |c| c.backoff = Duration::from_millis(1));
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let start = Instant::now();
    let j = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap();
    assert_eq!(j.verdict, Assessment::Safe);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(server.hits(), 2);
}

#[test]
fn timeouts_are_retried_then_fail_clearly() {
    let server = MockServer::start(|_, _| {
        Reply::Sleep(Duration::from_secs(3), Box::new(Reply::scores(-0.1, -3.0)))
    });
    let g = guard(&[&server.url], |c| {
        c.timeout = Duration::from_millis(300);
        c.max_retries = 2;
    });
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let start = Instant::now();
    let err = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    let elapsed = start.elapsed();
    let Error::Remote {
        status,
        reason,
        endpoint,
        ..
    } = &err
    else {
        panic!("expected Remote, got {err:?}")
    };
    assert_eq!(*status, None);
    assert!(reason.contains("timed out after 300 ms"), "{reason}");
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert!(endpoint.starts_with(&server.url), "{endpoint}");
    assert_eq!(server.hits(), 3);
    assert!(
        elapsed < Duration::from_secs(3),
        "each attempt is cut at the timeout: {elapsed:?}"
    );
}

#[test]
fn a_400_is_not_retried_and_carries_the_server_message() {
    let server = MockServer::start(|_, _| {
        Reply::Status {
        code: 400,
        body: r#"{"object":"error","message":"This model's maximum context length is 32768 tokens.","type":"BadRequestError","code":400}"#.into(),
        retry_after: None,
    }
    });
    let g = guard(&[&server.url], |c| c.max_retries = 5);
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let err = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    let Error::Remote { status, reason, .. } = &err else {
        panic!("expected Remote, got {err:?}")
    };
    assert_eq!(*status, Some(400));
    assert_eq!(
        reason,
        "HTTP 400: This model's maximum context length is 32768 tokens."
    );
    assert_eq!(server.hits(), 1);
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!(
            "remote endpoint {}/chat/completions: HTTP 400",
            server.url
        )),
        "{shown}"
    );
}

#[test]
fn long_server_messages_are_truncated() {
    let server = MockServer::start(|_, _| Reply::status(422, &"x".repeat(5000)));
    let g = guard(&[&server.url], |_| {});
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let err = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    assert!(err.to_string().len() < 600, "{}", err.to_string().len());
    assert_eq!(server.hits(), 1);
}
