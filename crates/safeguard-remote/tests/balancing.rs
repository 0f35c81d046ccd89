//! Load balancing over several endpoints.

use safeguard_core::guard::Guard;
use safeguard_core::{Error, Format};

use crate::common::{dead_url, guard, image, request, text_policy, MockServer, Reply};

#[test]
fn traffic_is_spread_over_both_servers() {
    let a = MockServer::start(|_, _| Reply::scores(-0.2, -2.0));
    let b = MockServer::start(|_, _| Reply::scores(-0.2, -2.0));
    let g = guard(&[&a.url, &b.url], |c| c.concurrency = 4);
    let (img, policy) = (image("chelsea.jpg"), text_policy());
    let requests = vec![request(&img, &policy, Format::Verdict); 8];
    let results = g.judge(&requests);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(a.hits() + b.hits(), 8);
    assert_eq!((a.hits(), b.hits()), (4, 4), "round-robin");
    a.assert_well_formed();
    b.assert_well_formed();
}

#[test]
fn a_dead_server_is_skipped_and_the_batch_succeeds() {
    let live = MockServer::start(|_, _| Reply::scores(-2.0, -0.2));
    let dead = dead_url();
    let g = guard(&[&dead, &live.url], |c| {
        c.concurrency = 1;
        c.max_retries = 1;
    });
    let (img, policy) = (image("astronaut.jpg"), text_policy());
    let requests = vec![request(&img, &policy, Format::Verdict); 6];
    let results = g.judge(&requests);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        live.hits(),
        6,
        "every request ends on the live server, once"
    );
}

#[test]
fn all_servers_dead_fails_naming_what_was_tried() {
    let (d1, d2) = (dead_url(), dead_url());
    let g = guard(&[&d1, &d2], |c| c.max_retries = 1);
    let (img, policy) = (image("astronaut.jpg"), text_policy());
    let err = g
        .judge(&[request(&img, &policy, Format::Verdict)])
        .remove(0)
        .unwrap_err();
    let Error::Remote { reason, .. } = &err else {
        panic!("expected Remote, got {err:?}")
    };
    assert!(reason.starts_with("connection failed"), "{reason}");
    assert!(reason.contains(&d1) && reason.contains(&d2), "{reason}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the transport error is kept"
    );
}
