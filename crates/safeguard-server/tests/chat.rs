//! `POST /v1/chat/completions` and `GET /metrics` over real HTTP on an ephemeral port with the
//! tiny checkpoint: a chat built from a reference prompt answers the reference tokens (plain
//! and streamed), SSRF-style URLs are refused, a server without the local model answers 501,
//! the metrics text parses and counts what was sent. The parser's property tests are in
//! `parsing.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use safeguard_engine::{LocalGuard, LocalGuardOptions};
use safeguard_server::chat::{with_chat, ChatHandle};
use safeguard_server::{app, ApiKeys, AppState, ServerConfig};
use serde_json::{json, Value};

use crate::common::fixtures;

fn local() -> Arc<LocalGuard> {
    Arc::new(LocalGuard::load(&fixtures(), LocalGuardOptions::default()).unwrap())
}

/// Serves `app(state)` (with chat on `guard` when given) on `127.0.0.1:0`; returns the URL.
async fn start(guard: Arc<LocalGuard>, chat: bool) -> String {
    let state = Arc::new(
        AppState::new(
            guard.clone(),
            "tiny-guard",
            ApiKeys::none(),
            ServerConfig::default(),
        )
        .unwrap(),
    );
    let mut router = app(state);
    if chat {
        router = with_chat(router, ChatHandle::new(guard, 2));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// The L3 / verdict / image-a reference case as OpenAI messages (system text; user text, image
/// data URL, text) and its expected answer.
fn reference_messages() -> (Value, String, usize) {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["policy"] == "L3" && c["format"] == "verdict" && c["rule"].is_null())
        .unwrap()
        .clone();
    let prompt = case["prompt"].as_str().unwrap();
    let body = prompt.strip_prefix("<|im_start|>system\n").unwrap();
    let (system, rest) = body.split_once("<|im_end|>\n<|im_start|>user\n").unwrap();
    let (user, _) = rest.split_once("<|im_end|>\n").unwrap();
    let (before, after) = user.split_once("<|vision_start|>").unwrap();
    let (_, after) = after.split_once("<|vision_end|>").unwrap();
    let png = std::fs::read(fixtures().join(case["image"].as_str().unwrap())).unwrap();
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    let messages = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": [
            {"type": "text", "text": before},
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": after}]}
    ]);
    let expected = case["generated_text"]
        .as_str()
        .unwrap()
        .replace("<|im_end|>", "");
    (
        messages,
        expected,
        case["input_ids"].as_array().unwrap().len(),
    )
}

async fn post(url: &str, body: &Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_answers_the_reference_plain_and_streamed() {
    let url = start(local(), true).await;
    let (messages, expected, prompt_tokens) = reference_messages();
    let request = json!({"model": "tiny-guard", "messages": messages, "temperature": 0,
                         "max_tokens": 16});
    let (status, body) = post(&url, &request).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny-guard");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens + 2);

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ct = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, expected);
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 2);

    // Stop strings and the token budget.
    let mut short = request.clone();
    short["max_tokens"] = json!(1);
    let (_, body) = post(&url, &short).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let mut stop = request.clone();
    stop["stop"] = json!(["saf", "uns"]);
    let (_, body) = post(&url, &stop).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_urls_bad_images_and_non_local_guards_are_refused() {
    let guard = local();
    let url = start(guard.clone(), true).await;
    let image = |u: &str| {
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": u}}]}]})
    };
    for (body, status, code) in [
        (
            image("http://169.254.169.254/latest/meta-data"),
            400,
            "unsupported_image_url",
        ),
        (
            image("https://example.com/a.png"),
            400,
            "unsupported_image_url",
        ),
        (
            image("data:image/png;base64,aGVsbG8="),
            400,
            "invalid_image",
        ),
        (json!({"messages": []}), 400, "invalid_request"),
        (json!({"messages": "x"}), 400, "invalid_json"),
    ] {
        let (got, text) = post(&url, &body).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (got, v["error"]["code"].as_str().unwrap()),
            (status, code),
            "{text}"
        );
    }
    let plain = start(guard, false).await;
    let (status, text) = post(
        &plain,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (501, Some("chat_unavailable"))
    );
}

/// `name{labels}` → value, and `name` → type, of an exposition text; fails on a malformed line.
fn parse_metrics(text: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_string(), kind.to_string());
        } else if line.starts_with("# HELP ") || line.is_empty() {
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE before {line}");
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "{line}"
            );
        }
    }
    (samples, types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_batches_cache_and_chat() {
    let url = start(local(), true).await;
    let client = reqwest::Client::new();
    let png = std::fs::read(fixtures().join("image-a.png")).unwrap();
    let image = base64::engine::general_purpose::STANDARD.encode(png);
    for _ in 0..3 {
        let r = client
            .post(format!("{url}/v1/moderate"))
            .json(&json!({"image": image, "policy": "L1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client
        .post(format!("{url}/v1/moderate"))
        .json(&json!({"image": "!!", "policy": "L1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _) = post(
        &url,
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200);

    let response = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let (samples, types) = parse_metrics(&response.text().await.unwrap());
    let get = |k: &str| *samples.get(k).unwrap_or_else(|| panic!("no sample {k}"));
    assert_eq!(types["safeguard_requests_total"], "counter");
    assert_eq!(types["safeguard_batch_size"], "histogram");
    assert_eq!(types["safeguard_queue_depth"], "gauge");
    assert_eq!(
        get(r#"safeguard_requests_total{route="/v1/moderate",status="2xx"}"#),
        3.0
    );
    assert_eq!(
        get(r#"safeguard_requests_total{route="/v1/moderate",status="4xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"safeguard_requests_total{route="/v1/chat/completions",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"safeguard_request_duration_seconds_count{route="/v1/moderate"}"#),
        4.0
    );
    assert!(get(r#"safeguard_request_duration_seconds_sum{route="/v1/moderate"}"#) > 0.0);
    assert_eq!(get(r#"safeguard_errors_total{code="invalid_image"}"#), 1.0);
    assert_eq!(get("safeguard_batch_size_count"), 3.0);
    assert_eq!(get("safeguard_batch_size_sum"), 3.0);
    assert_eq!(get(r#"safeguard_batch_size_bucket{le="+Inf"}"#), 3.0);
    assert_eq!(get(r#"safeguard_batch_size_bucket{le="1"}"#), 3.0);
    assert_eq!(get("safeguard_queue_depth"), 0.0);
    // One policy: the first image computes its prefix, the others reuse it.
    assert_eq!(get("safeguard_prefix_cache_misses_total"), 1.0);
    assert_eq!(get("safeguard_prefix_cache_hits_total"), 2.0);
    let generated = get("safeguard_chat_completion_tokens_total");
    assert!((1.0..=3.0).contains(&generated), "{generated}");
    assert_eq!(get("safeguard_chat_active"), 0.0);
}
