//! The routes on the tiny trained checkpoint (and the lite backend): shapes and verdicts.

use std::sync::Arc;

use safeguard_core::policy::presets;
use safeguard_server::openapi::ROUTES;
use safeguard_server::{ApiKeys, ServerConfig};
use serde_json::{json, Value};

use crate::common::*;

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let r = client().post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moderate_json_base64_data_url_multipart_and_batch() {
    let server = TestServer::start(tiny_guard(), ApiKeys::none(), ServerConfig::default()).await;
    let url = server.at("/v1/moderate");
    let l3_hash = presets::get("L3").unwrap().hash();

    let (status, a) = post_json(&url, json!({"image": b64(&image_a()), "policy": "L3"})).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["verdict"], "unsafe", "{a}");
    assert!(
        a["rules_hit"]
            .as_array()
            .unwrap()
            .contains(&json!("sexual")),
        "{a}"
    );
    assert_eq!(a["policy_hash"], l3_hash);
    assert_eq!(a["model"], "tiny-guard");
    assert_eq!(a["backend"], "local");
    let p = a["p_unsafe"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&p), "{a}");
    assert!(a["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(!a["rules"].as_array().unwrap().is_empty());

    let (status, b) = post_json(
        &url,
        json!({"image": data_url(&image_b()), "policy": "L3", "mode": "score", "threshold": 0.5}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["verdict"], "safe", "{b}");

    // The same verdict whatever the body: multipart with a file part.
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(image_a())
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("policy", "L3");
    let r = client().post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["verdict"], "unsafe", "{m}");
    assert_eq!(m["p_unsafe"], a["p_unsafe"], "multipart and JSON agree");

    // Batch: one result per image, errors in place.
    let (status, batch) = post_json(
        &url,
        json!({"images": [b64(&image_a()), data_url(&image_b()), b64(b"not an image")], "policy": "L3"}),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["verdict"], "unsafe");
    assert_eq!(results[1]["verdict"], "safe");
    assert_eq!(results[2]["error"]["code"], "invalid_image", "{batch}");

    // Inline policies: a preset with a rule switched to allowed, and a rules object.
    let (status, allowed) = post_json(
        &url,
        json!({"image": b64(&image_a()), "policy": {"preset": "L3", "allow": ["sexual"]}}),
    )
    .await;
    assert_eq!(status, 200, "{allowed}");
    assert_ne!(allowed["policy_hash"], l3_hash);
    let (status, custom) = post_json(
        &url,
        json!({"image": b64(&image_b()), "policy": {"rules": [
            {"id": "weapons", "title": "Weapons", "stance": "prohibited"}]}}),
    )
    .await;
    assert_eq!(status, 200, "{custom}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moderations_is_openai_shaped() {
    let server = TestServer::start(tiny_guard(), ApiKeys::none(), ServerConfig::default()).await;
    let url = server.at("/v1/moderations");
    let (status, r) = post_json(
        &url,
        json!({"model": "safeguard", "policy": "L3", "input": [
            {"type": "text", "text": "ignored"},
            {"type": "image_url", "image_url": {"url": data_url(&image_a())}}]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("modr-"), "{r}");
    assert_eq!(r["model"], "tiny-guard");
    let result = &r["results"][0];
    assert_eq!(result["flagged"], true, "{r}");
    assert_eq!(result["categories"]["sexual"], true, "{r}");
    let l3 = presets::get("L3").unwrap();
    let prohibited: Vec<&str> = l3.prohibited().map(|r| r.id.as_str()).collect();
    let categories = result["categories"].as_object().unwrap();
    assert_eq!(categories.len(), prohibited.len(), "prohibited rules only");
    for id in &prohibited {
        let score = result["category_scores"][id].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert_eq!(result["category_applied_input_types"][id], json!(["image"]));
    }
    assert_eq!(result["safeguard"]["verdict"], "unsafe");
    assert_eq!(result["safeguard"]["policy_hash"], l3.hash());

    // Default policy: openai. Safe image: not flagged.
    let (status, r) = post_json(
        &url,
        json!({"input": [{"type": "image_url", "image_url": {"url": data_url(&image_b())}}]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["results"][0]["safeguard"]["policy_hash"],
        presets::get("openai").unwrap().hash()
    );
    assert!(r["results"][0]["categories"]["violence/graphic"].is_boolean());

    // Text only: the guard judges images.
    for input in [
        json!("some text"),
        json!(["a", "b"]),
        json!([{"type": "text", "text": "x"}]),
    ] {
        let resp = client()
            .post(&url)
            .json(&json!({"input": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(resp).await, (400, "image_required".into()));
    }
    let resp = client()
        .post(&url)
        .json(&json!({"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (400, "unsupported_image_url".into())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_health_ready_and_openapi() {
    let keys = ApiKeys::from_keys(["k1"]);
    let server = TestServer::start(tiny_guard(), keys, ServerConfig::default()).await;
    let c = client();
    // Health needs no key.
    for path in ["/healthz", "/readyz"] {
        let r = c.get(server.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = c
        .get(server.at("/v1/policies"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let policies = body["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, presets::names());
    let l3 = policies.iter().find(|p| p["name"] == "L3").unwrap();
    assert!(l3["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == "sexual"));

    let r = c
        .get(server.at("/openapi.json"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    for path in [
        "/v1/moderate",
        "/v1/moderations",
        "/v1/policies",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(ROUTES.iter().any(|(_, p)| *p == path), "{path} not listed");
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }

    // Not ready once shutdown starts; unknown routes are JSON 404s.
    let r = c
        .get(server.at("/nope"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    let r = c
        .get(server.at("/v1/moderate"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (405, "method_not_allowed".into()));
    server.state.set_ready(false);
    let r = c.get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lite_backend_behind_the_same_api() {
    let guard = safeguard_lite::LiteGuard::new(safeguard_vision::DecodeLimits::default()).unwrap();
    let server = TestServer::start(Arc::new(guard), ApiKeys::none(), ServerConfig::default()).await;
    let (status, r) = post_json(
        &server.at("/v1/moderate"),
        json!({"image": b64(&image_b()), "policy": "L3"}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["backend"], "lite");
    assert!(["safe", "unsafe", "unassessed"].contains(&r["verdict"].as_str().unwrap()));
    let (status, r) = post_json(
        &server.at("/v1/moderate"),
        json!({"image": b64(&png_declaring(50_000, 50_000)), "policy": "L3"}),
    )
    .await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("invalid_image"))
    );
    server.stop().await;
}
