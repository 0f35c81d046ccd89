//! Keys, limits and hostile input: every refusal is a 4xx/5xx JSON error with a stable code,
//! and good requests are still served during and after.

use std::sync::Arc;
use std::time::Duration;

use safeguard_engine::scheduler::BatcherConfig;
use safeguard_server::{ApiKeys, ErrorCode, OnError, ServerConfig};
use serde_json::{json, Value};

use crate::common::*;

/// POSTs image-b under L3 to `url` (a `/v1/moderate` URL), without a key.
async fn post_image_b(url: &str) -> reqwest::Response {
    client()
        .post(url)
        .json(&json!({"image": b64(&image_b()), "policy": "L3"}))
        .send()
        .await
        .unwrap()
}

async fn good_request(server: &TestServer, key: Option<&str>) {
    let mut req = client()
        .post(server.at("/v1/moderate"))
        .json(&json!({"image": b64(&image_b()), "policy": "L3"}));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "a good request is still served");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["verdict"], "safe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_get_json_errors_and_good_ones_still_pass() {
    let keys = ApiKeys::from_keys(["secret-key-1", "secret-key-2"]);
    let config = ServerConfig {
        max_body_bytes: 12 << 20,
        ..ServerConfig::default()
    };
    let server = TestServer::start(tiny_guard(), keys, config).await;
    let url = server.at("/v1/moderate");
    let c = client();
    let key = "secret-key-2";
    let body = json!({"image": b64(&image_b()), "policy": "L3"});

    // No key, wrong key, malformed header → 401.
    let r = c.post(&url).json(&body).send().await.unwrap();
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = c
        .post(&url)
        .bearer_auth("secret-key-3")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = c
        .post(&url)
        .header("authorization", "Basic c2VjcmV0LWtleS0x")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    good_request(&server, Some("secret-key-1")).await;

    let send_raw = |content_type: &'static str, bytes: Vec<u8>| {
        c.post(&url)
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(bytes)
            .send()
    };
    let hostile: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        (
            "oversized body",
            send_raw("application/json", vec![b' '; 13 << 20]).await.unwrap(),
            413,
            "payload_too_large",
        ),
        (
            "decompression bomb (50000x50000 PNG)",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&png_declaring(50_000, 50_000)), "policy": "L3"}))
                .send()
                .await
                .unwrap(),
            400,
            "invalid_image",
        ),
        (
            "truncated image",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&image_a()[..image_a().len() / 2]), "policy": "L3"}))
                .send()
                .await
                .unwrap(),
            400,
            "invalid_image",
        ),
        (
            "garbage bytes",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&[0x42; 4096]), "policy": "L3"}))
                .send()
                .await
                .unwrap(),
            400,
            "invalid_image",
        ),
        (
            "wrong content type",
            send_raw("text/plain", serde_json::to_vec(&body).unwrap()).await.unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            c.post(&url).bearer_auth(key).body("{}").send().await.unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            "200-level nested JSON",
            send_raw(
                "application/json",
                format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
            )
            .await
            .unwrap(),
            400,
            "invalid_json",
        ),
        (
            "nested JSON inside the policy",
            send_raw(
                "application/json",
                format!(
                    r#"{{"image": "aGk=", "policy": {}1{}}}"#,
                    "{\"a\":".repeat(200),
                    "}".repeat(200)
                )
                .into_bytes(),
            )
            .await
            .unwrap(),
            400,
            "invalid_json",
        ),
        (
            "10 MB policy text",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&image_b()), "policy": {"text": "no guns ".repeat(10 << 17)}}))
                .send()
                .await
                .unwrap(),
            413,
            "policy_too_large",
        ),
        (
            "10 MB raw policy string",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&image_b()), "policy": "no guns ".repeat(10 << 17)}))
                .send()
                .await
                .unwrap(),
            413,
            "policy_too_large",
        ),
        (
            "unknown preset (no file reads)",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&image_b()), "policy": "/etc/passwd"}))
                .send()
                .await
                .unwrap(),
            400,
            "unknown_policy",
        ),
        (
            "unknown field",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&image_b()), "policy": "L3", "treshold": 0.2}))
                .send()
                .await
                .unwrap(),
            400,
            "invalid_json",
        ),
        (
            "threshold out of range",
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"image": b64(&image_b()), "policy": "L3", "threshold": 7}))
                .send()
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
        (
            "malformed multipart",
            send_raw("multipart/form-data; boundary=xyz", b"--xyz\r\ngarbage".to_vec())
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
    ];
    for (what, response, status, code) in hostile {
        let got = error_code(response).await;
        assert_eq!(got, (status, code.to_string()), "{what}");
        // Interleave: the server still answers good requests.
        good_request(&server, Some(key)).await;
    }
    // Errors are counted by code.
    assert!(server.state.counters.errors_with(ErrorCode::InvalidImage) >= 3);
    assert!(server.state.counters.errors_with(ErrorCode::Unauthorized) >= 3);

    // Concurrent hostile and good requests.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let image = if i % 2 == 0 {
                b64(&image_b())
            } else {
                b64(&png_declaring(40_000, 40_000))
            };
            let r = client()
                .post(&url)
                .bearer_auth(key)
                .json(&json!({"image": image, "policy": "L3"}))
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16())
        }));
    }
    for t in tasks {
        let (i, status) = t.await.unwrap();
        assert_eq!(status, if i % 2 == 0 { 200 } else { 400 });
    }
    good_request(&server, Some(key)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn full_queue_answers_429_and_recovers() {
    let config = ServerConfig {
        batcher: BatcherConfig {
            max_batch: 1,
            max_wait: Duration::from_millis(1),
            queue_capacity: 1,
        },
        ..ServerConfig::default()
    };
    let guard = Arc::new(FakeGuard(Behaviour::Slow(Duration::from_millis(300))));
    let server = TestServer::start(guard, ApiKeys::none(), config).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = server.at("/v1/moderate");
        tasks.push(tokio::spawn(async move { post_image_b(&url).await }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        if r.status() == 200 {
            ok += 1;
        } else {
            assert_eq!(r.headers()["retry-after"], "1");
            assert_eq!(error_code(r).await, (429, "queue_full".into()));
            full += 1;
        }
    }
    assert!(ok >= 1 && full >= 1, "ok {ok}, queue_full {full}");
    // Served again once the queue drains.
    let r = post_image_b(&server.at("/v1/moderate")).await;
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_over_the_concurrency_limit_get_503_and_health_stays_up() {
    let config = ServerConfig {
        max_concurrent_requests: 2,
        ..ServerConfig::default()
    };
    let guard = Arc::new(FakeGuard(Behaviour::Slow(Duration::from_millis(400))));
    let server = TestServer::start(guard, ApiKeys::none(), config).await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let url = server.at("/v1/moderate");
        tasks.push(tokio::spawn(
            async move { post_image_b(&url).await.status() },
        ));
    }
    // Both slots are taken while the guard sleeps.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.state.request_slots.available_permits() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = post_image_b(&server.at("/v1/moderate")).await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, (503, "overloaded".into()));
    // Health routes do not count against the limit.
    let health = client().get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // The slots are free again.
    let r = post_image_b(&server.at("/v1/moderate")).await;
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_is_per_key() {
    let config = ServerConfig {
        rate_limit: Some(2.0),
        ..ServerConfig::default()
    };
    let guard = Arc::new(FakeGuard(Behaviour::Slow(Duration::ZERO)));
    let server = TestServer::start(guard, ApiKeys::from_keys(["a", "b"]), config).await;
    let get = |key: &'static str| {
        client()
            .get(server.at("/v1/policies"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(get("a").await.unwrap().status(), 200);
    assert_eq!(get("a").await.unwrap().status(), 200);
    let r = get("a").await.unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(error_code(r).await, (429, "rate_limited".into()));
    assert_eq!(
        get("b").await.unwrap().status(),
        200,
        "other keys are not limited"
    );
    // Health is neither authenticated nor limited.
    for _ in 0..5 {
        let r = client().get(server.at("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get("a").await.unwrap().status(), 200, "tokens refill");
    server.stop().await;
}

/// A guard that misbehaves as `behaviour` says: 500 `guard_error` by default, and an *unsafe*
/// answer (never safe) on both moderation routes under `--on-error unsafe`.
async fn assert_fails_closed(behaviour: Behaviour) {
    let body = json!({"image": b64(&image_b()), "policy": "L3"});
    let guard = || Arc::new(FakeGuard(behaviour));

    let server = TestServer::start(guard(), ApiKeys::none(), ServerConfig::default()).await;
    let r = client()
        .post(server.at("/v1/moderate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (500, "guard_error".into()));
    server.stop().await;

    let config = ServerConfig {
        on_error: OnError::Unsafe,
        ..ServerConfig::default()
    };
    let server = TestServer::start(guard(), ApiKeys::none(), config).await;
    let r = client()
        .post(server.at("/v1/moderate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["verdict"], "unsafe", "{v}");
    assert!(
        v["note"].as_str().unwrap().contains("--on-error unsafe"),
        "{v}"
    );
    let r = client()
        .post(server.at("/v1/moderations"))
        .json(
            &json!({"input": [{"type": "image_url", "image_url": {"url": data_url(&image_b())}}]}),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["flagged"], true, "{v}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_failures_fail_closed_with_on_error_unsafe() {
    assert_fails_closed(Behaviour::Fail).await;
}

/// A backend that computed *safe* from a NaN score (what `NaN >= threshold` gives) is caught by
/// the server's own check: never served as safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nan_score_is_never_served_as_safe() {
    assert_fails_closed(Behaviour::NanSafe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_requests_time_out_and_shutdown_finishes_in_flight_ones() {
    let config = ServerConfig {
        request_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let guard = Arc::new(FakeGuard(Behaviour::Slow(Duration::from_millis(1500))));
    let server = TestServer::start(guard, ApiKeys::none(), config).await;
    let body = json!({"image": b64(&image_b()), "policy": "L3"});
    let r = client()
        .post(server.at("/v1/moderate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (504, "timeout".into()));
    server.stop().await;

    // Graceful shutdown: a request in flight when the signal comes still gets its answer.
    let guard = Arc::new(FakeGuard(Behaviour::Slow(Duration::from_millis(800))));
    let server = TestServer::start(guard, ApiKeys::none(), ServerConfig::default()).await;
    let url = server.at("/v1/moderate");
    let in_flight = tokio::spawn(async move {
        client()
            .post(&url)
            .json(&json!({"image": b64(&image_b()), "policy": "L3"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop().await;
    assert_eq!(in_flight.await.unwrap(), 200);
}

/// A client that sends a whole over-limit body before reading (as most HTTP clients do) gets
/// the 413 JSON answer, not a reset connection: the server reads on and drops the excess. JSON
/// and multipart uploads alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_uploads_get_their_413_after_sending_everything() {
    let config = ServerConfig {
        max_body_bytes: 1 << 20,
        ..ServerConfig::default()
    };
    let guard = Arc::new(FakeGuard(Behaviour::Slow(Duration::ZERO)));
    let server = TestServer::start(guard, ApiKeys::none(), config).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let statuses = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let kinds = ["application/json", "multipart/form-data; boundary=XBOUNDARY"];
        (0..10)
            .map(|i| {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                let body = vec![b' '; 6 << 20];
                let head = format!(
                    "POST /v1/moderate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                    kinds[i % 2],
                    body.len()
                );
                s.write_all(head.as_bytes()).unwrap();
                // Fails with a reset if the server closed before reading the upload.
                s.write_all(&body).map_err(|e| e.to_string())?;
                let mut response = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read until the JSON error body has arrived.
                while !String::from_utf8_lossy(&response).contains("payload_too_large") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => response.extend_from_slice(&chunk[..n]),
                    }
                }
                Ok(String::from_utf8_lossy(&response).to_string())
            })
            .collect::<Vec<Result<String, String>>>()
    })
    .await
    .unwrap();
    for r in statuses {
        let text = r.expect("the upload was written completely");
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("payload_too_large"), "{text}");
    }
    good_request(&server, None).await;
    server.stop().await;
}
