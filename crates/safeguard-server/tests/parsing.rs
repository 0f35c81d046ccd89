//! Property tests of request parsing: `/v1/moderate`, `/v1/moderations` and
//! `/v1/chat/completions` bodies (arbitrary bytes, arbitrary JSON built from the requests' own
//! keys, and well-formed requests that must parse to what they say), and multipart uploads sent
//! to a real server on loopback. Whatever arrives, the answer is a parsed request or a 4xx error
//! with a stable code and a bounded message; never a panic or a 5xx.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use safeguard_core::policy::presets;
use safeguard_core::Format;
use safeguard_server::{chat, moderate, moderations, ApiError, ApiKeys, ErrorCode, ServerConfig};
use serde_json::{json, Value};

use crate::common::Behaviour;
use crate::common::{b64, client, data_url, image_a, FakeGuard, TestServer};

/// Images per request in these tests.
const MAX_IMAGES: usize = 4;

/// Longest error message: errors quote at most a few hundred characters of the input.
const MAX_MESSAGE: usize = 1200;

/// Arbitrary JSON: scalars (including valid images, presets and policy texts), arrays, and
/// objects whose keys come from `keys`, nested up to 4 deep.
fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let png = data_url(&image_a());
    let raw = b64(&image_a());
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        (0.0f64..=1.0).prop_map(|f| json!(f)),
        "[a-z_:/;,.=+# {}\\[\\]\"-]{0,16}".prop_map(Value::from),
        prop_oneof![
            Just(png),
            Just(raw),
            Just("data:image/png;base64,iVBORw0KGgo=".to_string()),
            Just("data:image/png,raw".to_string()),
            Just("http://127.0.0.1/x.png".to_string()),
            Just("L3".to_string()),
            Just("openai".to_string()),
            Just("no such preset".to_string()),
            Just("# Policy\n\n## Prohibited\n- weapons: no guns\n".to_string()),
            Just("{\"preset\": \"llavaguard\", \"allow\": [\"O1\"]}".to_string()),
            Just("score".to_string()),
            Just("reason".to_string()),
            Just("user".to_string()),
            Just("image_url".to_string()),
            Just("text".to_string()),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        let key = prop::sample::select(keys).prop_map(String::from);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const MODERATE_KEYS: &[&str] = &[
    "image",
    "images",
    "policy",
    "mode",
    "threshold",
    "text",
    "markdown",
    "toml",
    "rules",
    "preset",
    "allow",
    "prohibit",
    "id",
    "description",
    "stance",
    "exceptions",
];

const MODERATIONS_KEYS: &[&str] = &[
    "model",
    "input",
    "type",
    "text",
    "image_url",
    "url",
    "policy",
    "threshold",
    "preset",
    "rules",
];

const CHAT_KEYS: &[&str] = &[
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "n",
    "seed",
    "logprobs",
    "top_logprobs",
];

/// An error must be a client error with a bounded message.
fn client_error(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(
        e.code.status().is_client_error(),
        "{} is not 4xx: {e}",
        e.code.as_str()
    );
    prop_assert!(
        e.message.chars().count() <= MAX_MESSAGE,
        "message too long: {}",
        e.message.len()
    );
    Ok(())
}

fn moderate_checked(body: &[u8]) -> Result<(), TestCaseError> {
    match moderate::parse_request(body, MAX_IMAGES) {
        Ok(input) => {
            prop_assert!((1..=MAX_IMAGES).contains(&input.images.len()));
            prop_assert!(input.images.iter().all(|i| !i.is_empty()));
            prop_assert!((0.0..=1.0).contains(&input.spec.threshold));
            prop_assert_eq!(input.spec.policy_hash.clone(), input.spec.policy.hash());
            Ok(())
        }
        Err(e) => client_error(&e),
    }
}

fn moderations_checked(body: &[u8]) -> Result<(), TestCaseError> {
    match moderations::parse_request(body, MAX_IMAGES) {
        Ok(input) => {
            prop_assert!((1..=MAX_IMAGES).contains(&input.images.len()));
            prop_assert_eq!(input.spec.format, Format::Verdict);
            prop_assert!((0.0..=1.0).contains(&input.spec.threshold));
            Ok(())
        }
        Err(e) => client_error(&e),
    }
}

fn chat_checked(body: &[u8]) -> Result<(), TestCaseError> {
    match chat::parse_request(body, MAX_IMAGES) {
        Ok(parsed) => {
            prop_assert!(!parsed.request.messages.is_empty());
            prop_assert!(parsed.request.max_tokens >= 1);
            prop_assert!(parsed.request.logprobs.is_none_or(|k| k <= 20));
            Ok(())
        }
        Err(e) => client_error(&e),
    }
}

/// A well-formed `/v1/moderate` request and what it must parse to.
#[derive(Debug, Clone)]
struct Wellformed {
    body: Value,
    images: usize,
    batch: bool,
    policy: String,
    format: Format,
    threshold: f64,
}

fn wellformed_moderate() -> impl Strategy<Value = Wellformed> {
    let names: Vec<&'static str> = presets::names();
    (
        prop::sample::select(names),
        prop::option::of(prop::sample::select(vec![
            ("score", Format::Verdict),
            ("reason", Format::Reasoning),
            ("json", Format::Json),
        ])),
        prop::option::of(0.0f64..=1.0),
        0..=MAX_IMAGES,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(policy, mode, threshold, n, as_url, as_object)| {
            let image = if as_url {
                data_url(&image_a())
            } else {
                b64(&image_a())
            };
            let mut body = json!({
                "policy": if as_object { json!({"preset": policy}) } else { json!(policy) },
            });
            // n = 0: the single-image form.
            if n == 0 {
                body["image"] = json!(image);
            } else {
                body["images"] = json!(vec![image; n]);
            }
            if let Some((name, _)) = mode {
                body["mode"] = json!(name);
            }
            if let Some(t) = threshold {
                body["threshold"] = json!(t);
            }
            Wellformed {
                body,
                images: n.max(1),
                batch: n > 0,
                policy: policy.to_string(),
                format: mode.map_or(Format::Verdict, |(_, f)| f),
                threshold: threshold.unwrap_or(0.5),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        moderate_checked(&bytes)?;
        moderations_checked(&bytes)?;
        chat_checked(&bytes)?;
    }

    #[test]
    fn moderate_answers_a_request_or_a_4xx(value in json_value(MODERATE_KEYS)) {
        moderate_checked(value.to_string().as_bytes())?;
    }

    #[test]
    fn moderations_answers_a_request_or_a_4xx(value in json_value(MODERATIONS_KEYS)) {
        moderations_checked(value.to_string().as_bytes())?;
    }

    #[test]
    fn chat_answers_a_request_or_a_4xx(value in json_value(CHAT_KEYS)) {
        chat_checked(value.to_string().as_bytes())?;
    }

    #[test]
    fn wellformed_moderate_requests_parse_to_what_they_say(w in wellformed_moderate()) {
        let input = moderate::parse_request(w.body.to_string().as_bytes(), MAX_IMAGES)
            .map_err(|e| TestCaseError::fail(format!("{e} for {}", w.body)))?;
        prop_assert_eq!(input.images.len(), w.images);
        prop_assert!(input.images.iter().all(|i| *i == image_a()));
        prop_assert_eq!(input.batch, w.batch);
        prop_assert_eq!(input.spec.format, w.format);
        prop_assert_eq!(input.spec.threshold, w.threshold);
        let preset = presets::get(&w.policy).unwrap();
        prop_assert_eq!(&input.spec.policy_hash, &preset.hash());
    }

    #[test]
    fn wellformed_moderations_requests_parse_to_their_images(
        n in 1..=MAX_IMAGES,
        texts in 0usize..3,
        policy in prop::option::of(prop::sample::select(presets::names())),
    ) {
        let mut input: Vec<Value> = vec![json!({"type": "text", "text": "caption"}); texts];
        for _ in 0..n {
            input.push(json!({"type": "image_url", "image_url": {"url": data_url(&image_a())}}));
        }
        let mut body = json!({"model": "safeguard", "input": input});
        if let Some(p) = policy {
            body["policy"] = json!(p);
        }
        let parsed = moderations::parse_request(body.to_string().as_bytes(), MAX_IMAGES)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.images.len(), n);
        let want = presets::get(policy.unwrap_or("openai")).unwrap();
        prop_assert_eq!(&parsed.spec.policy_hash, &want.hash());
    }
}

#[test]
fn too_many_images_and_oversized_policies_have_their_codes() {
    let image = data_url(&image_a());
    let body = json!({"images": vec![image.clone(); MAX_IMAGES + 1], "policy": "L3"});
    let e = moderate::parse_request(body.to_string().as_bytes(), MAX_IMAGES).unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManyImages);
    let body = json!({"image": image, "policy": {"text": "x ".repeat(40_000)}});
    let e = moderate::parse_request(body.to_string().as_bytes(), MAX_IMAGES).unwrap_err();
    assert_eq!(e.code, ErrorCode::PolicyTooLarge);
    let body = json!({"input": "only text"});
    let e = moderations::parse_request(body.to_string().as_bytes(), MAX_IMAGES).unwrap_err();
    assert_eq!(e.code, ErrorCode::ImageRequired);
}

/// One multipart part: field name, file name or not, content.
#[derive(Debug, Clone)]
struct Part {
    name: String,
    file: bool,
    content: Vec<u8>,
}

fn multipart_parts() -> impl Strategy<Value = Vec<Part>> {
    let name = prop_oneof![
        Just("image"),
        Just("images"),
        Just("image[]"),
        Just("policy"),
        Just("mode"),
        Just("threshold"),
        Just("other"),
        Just(""),
    ]
    .prop_map(String::from);
    let content = prop_oneof![
        Just(image_a()),
        Just(Vec::new()),
        Just(b"L3".to_vec()),
        Just(b"0.25".to_vec()),
        Just(b"2".to_vec()),
        Just(b"score".to_vec()),
        Just(b"# P\n\n## Prohibited\n- guns: no guns\n".to_vec()),
        Just(vec![0xff, 0xfe, 0x00]),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    let part = (name, any::<bool>(), content).prop_map(|(name, file, content)| Part {
        name,
        file,
        content,
    });
    // Half the uploads start as a valid one (policy and an image), then get random parts.
    (
        any::<bool>(),
        prop::collection::vec(part.clone(), 0..6),
        prop::collection::vec(part, 0..2),
    )
        .prop_map(|(valid, random, few)| {
            if !valid {
                return random;
            }
            let mut parts = vec![
                Part {
                    name: "policy".into(),
                    file: false,
                    content: b"L3".to_vec(),
                },
                Part {
                    name: "image".into(),
                    file: true,
                    content: image_a(),
                },
            ];
            parts.extend(few);
            parts
        })
}

/// Multipart uploads of arbitrary parts to a real server (a guard that answers at once): every
/// answer is 200 with results or a 4xx JSON error with a code; the server keeps serving.
#[test]
fn multipart_uploads_answer_results_or_4xx_errors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::start(
        Arc::new(FakeGuard(Behaviour::Slow(Duration::ZERO))),
        ApiKeys::none(),
        ServerConfig {
            max_images_per_request: MAX_IMAGES,
            ..ServerConfig::default()
        },
    ));
    let http = client();
    let url = server.at("/v1/moderate");
    let mut runner = TestRunner::new(Config::with_cases(96));
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    runner
        .run(&multipart_parts(), |parts| {
            let mut form = reqwest::multipart::Form::new();
            for p in &parts {
                let mut part = reqwest::multipart::Part::bytes(p.content.clone());
                if p.file {
                    part = part.file_name("upload.png");
                }
                form = form.part(p.name.clone(), part);
            }
            let (status, body) = rt.block_on(async {
                let r = http.post(&url).multipart(form).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            });
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            let v: Value = serde_json::from_str(&body)
                .map_err(|e| TestCaseError::fail(format!("{status}: not JSON ({e}): {body}")))?;
            match status {
                200 => {
                    let images = parts
                        .iter()
                        .filter(|p| ["image", "images", "image[]"].contains(&p.name.as_str()))
                        .count();
                    prop_assert!((1..=MAX_IMAGES).contains(&images), "{parts:?}");
                    prop_assert!(v.get("verdict").is_some() || v.get("results").is_some());
                }
                400..=499 => {
                    let code = v["error"]["code"].as_str().unwrap_or_default();
                    prop_assert!(
                        ErrorCode::ALL.iter().any(|c| c.as_str() == code),
                        "unknown code in {body}"
                    );
                }
                _ => prop_assert!(false, "status {status}: {body} for {parts:?}"),
            }
            Ok(())
        })
        .unwrap();
    // Both outcomes were exercised, and the server still answers.
    let statuses = statuses.into_inner().unwrap();
    assert!(statuses.get(&200).is_some_and(|&n| n > 0), "{statuses:?}");
    assert!(
        statuses.keys().any(|s| (400..500).contains(s)),
        "{statuses:?}"
    );
    let health = rt.block_on(async { http.get(server.at("/healthz")).send().await.unwrap() });
    assert_eq!(health.status(), 200);
    rt.block_on(server.stop());
}
