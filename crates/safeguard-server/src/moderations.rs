//! `POST /v1/moderations`: the OpenAI moderation API, as the official clients send and parse it.
//!
//! Request: `{"model"?, "input": STRING | [STRING] | [{"type": "text", "text"} |
//! {"type": "image_url", "image_url": {"url": DATA_URL}}], "policy"?, "threshold"?}`. The
//! policy (default `openai`) is an extra field (`extra_body={"policy": "L3"}` in the Python
//! client). Each image part gets one result; text parts are ignored (the guard judges
//! images), and input without any image is 400 `image_required`.
//!
//! Result: `flagged` = verdict unsafe; `categories` / `category_scores` /
//! `category_applied_input_types` have one key per prohibited rule id of the policy; an extra
//! `safeguard` object (ignored by OpenAI clients) carries verdict, p_unsafe, rules_hit and
//! policy_hash.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use safeguard_core::guard::{Assessment, RuleStatus};
use safeguard_core::{Format, Judgement, Policy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::input::{self, BodyKind};
use crate::judge::{judge_images, Spec};
use crate::state::AppState;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct ModerationsRequest {
    /// Ignored (one model is served); echoed nowhere.
    #[serde(default)]
    pub model: Option<String>,
    /// A string, an array of strings, or an array of text / image_url parts.
    pub input: Value,
    /// Our policy (default `openai`): as in `/v1/moderate`.
    #[serde(default)]
    pub policy: Option<Value>,
    /// `p_unsafe` at or above which an image is flagged (default 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// One result, in OpenAI's shape plus `safeguard`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModerationResult {
    /// Whether the image is unsafe under the policy.
    pub flagged: bool,
    /// Per prohibited rule id: whether the image breaks it.
    pub categories: BTreeMap<String, bool>,
    /// Per prohibited rule id: the rule's score in [0, 1] (1/0 from the hit when the guard
    /// gives no score).
    pub category_scores: BTreeMap<String, f64>,
    /// Per prohibited rule id: `["image"]`.
    pub category_applied_input_types: BTreeMap<String, Vec<String>>,
    /// Our own fields.
    pub safeguard: SafeguardFields,
}

/// The SafeGuard details of a moderation result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafeguardFields {
    /// `safe`, `unsafe` or `unassessed`.
    pub verdict: Assessment,
    /// Probability of unsafe.
    pub p_unsafe: Option<f64>,
    /// Prohibited rules broken.
    pub rules_hit: Vec<String>,
    /// Hex SHA-256 of the policy's prompt text.
    pub policy_hash: String,
    /// How the verdict was reached, when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Time from receiving the request to the answer, in milliseconds.
    pub latency_ms: f64,
}

/// The handler.
pub async fn handler(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let start = Instant::now();
    match moderations(&state, req, start).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// A checked `/v1/moderations` request: what gets judged.
#[derive(Debug)]
pub struct ModerationsInput {
    /// The encoded bytes of every image part, in order.
    pub images: Vec<Vec<u8>>,
    /// The policy (default `openai`), verdict format, threshold.
    pub spec: Spec,
}

/// Parses a JSON body: syntax and types are 400 `invalid_json`, input without an image 400
/// `image_required`, bad parts or values 400 `invalid_request`/`invalid_policy`/
/// `invalid_image`, more than `max_images` images 400 `too_many_images`. Never panics
/// (property-tested).
pub fn parse_request(body: &[u8], max_images: usize) -> Result<ModerationsInput, ApiError> {
    let body: ModerationsRequest = input::parse_json(body)?;
    let urls = image_urls(&body.input)?;
    if urls.len() > max_images {
        return Err(ApiError::new(
            ErrorCode::TooManyImages,
            format!(
                "{} images in one request; at most {max_images} are accepted",
                urls.len()
            ),
        ));
    }
    let policy = match &body.policy {
        Some(spec) => input::parse_policy(spec)?,
        None => input::parse_policy(&Value::from("openai"))?,
    };
    let threshold = input::parse_threshold(body.threshold)?;
    let images = urls
        .iter()
        .map(|u| input::decode_image(u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModerationsInput {
        images,
        spec: Spec::new(policy, Format::Verdict, threshold),
    })
}

async fn moderations(state: &AppState, req: Request, start: Instant) -> Result<Response, ApiError> {
    input::body_kind(&req, &[BodyKind::Json])?;
    let ModerationsInput { images, spec } = parse_request(
        &input::body_bytes(req, state.config.max_body_bytes).await?,
        state.config.max_images_per_request,
    )?;
    let policy = Arc::clone(&spec.policy);
    let judged = judge_images(state, images, &spec).await?;
    let mut results = Vec::with_capacity(judged.len());
    for j in judged {
        results.push(to_result(j?, &policy, &spec.policy_hash, start));
    }
    Ok(Json(serde_json::json!({
        "id": next_id(),
        "model": state.model,
        "results": results,
    }))
    .into_response())
}

/// The image URLs of `input`, in order; 400 when there are none.
fn image_urls(input: &Value) -> Result<Vec<String>, ApiError> {
    let bad = |m: &str| ApiError::new(ErrorCode::InvalidRequest, m.to_string());
    let parts = match input {
        Value::String(_) => Vec::new(),
        Value::Array(items) => items.clone(),
        _ => return Err(bad("`input` must be a string or an array")),
    };
    let mut urls = Vec::new();
    for part in &parts {
        match part {
            Value::String(_) => {}
            Value::Object(map) => match map.get("type").and_then(Value::as_str) {
                Some("text") => {}
                Some("image_url") => {
                    let url = match map.get("image_url") {
                        Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                        Some(Value::String(s)) => Some(s.as_str()),
                        _ => None,
                    };
                    let url = url.ok_or_else(|| bad("an image_url part needs image_url.url"))?;
                    urls.push(url.to_string());
                }
                _ => return Err(bad("input parts must have type `text` or `image_url`")),
            },
            _ => return Err(bad("input parts must be strings or objects")),
        }
    }
    if urls.is_empty() {
        return Err(ApiError::new(
            ErrorCode::ImageRequired,
            "the input has no image: SafeGuard judges images; add an image_url part with a data: URL",
        ));
    }
    Ok(urls)
}

fn to_result(j: Judgement, policy: &Policy, policy_hash: &str, start: Instant) -> ModerationResult {
    let mut categories = BTreeMap::new();
    let mut scores = BTreeMap::new();
    let mut types = BTreeMap::new();
    for rule in policy.prohibited() {
        let found = j.rules.iter().find(|r| r.id == rule.id);
        let hit =
            j.rules_hit.contains(&rule.id) || found.is_some_and(|r| r.status == RuleStatus::Hit);
        let score = found
            .and_then(|r| r.score)
            .unwrap_or(if hit { 1.0 } else { 0.0 });
        categories.insert(rule.id.clone(), hit);
        scores.insert(rule.id.clone(), score);
        types.insert(rule.id.clone(), vec!["image".to_string()]);
    }
    ModerationResult {
        flagged: j.verdict == Assessment::Unsafe,
        categories,
        category_scores: scores,
        category_applied_input_types: types,
        safeguard: SafeguardFields {
            verdict: j.verdict,
            p_unsafe: j.p_unsafe,
            rules_hit: j.rules_hit,
            policy_hash: policy_hash.to_string(),
            note: j.note,
            latency_ms: start.elapsed().as_secs_f64() * 1e3,
        },
    }
}

/// `modr-` + time and a process counter, in hex: unique within a process, ordered.
fn next_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "modr-{nanos:016x}{:06x}",
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
    )
}
