//! `POST /v1/moderate`: judge one image (or a batch) under a policy.
//!
//! JSON: `{"image": BASE64|DATA_URL, "policy": …, "mode": "score"|"reason"|"json",
//! "threshold": 0.5}`, or `{"images": [...], …}` for a batch. Multipart: `image` file parts
//! (one or more) and `policy`, `mode`, `threshold` text fields.
//! One image answers a [`ModerateResult`]; a batch answers `{"results": [...]}` where each
//! entry is a result or `{"error": {"code", "message"}}`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use safeguard_core::guard::{Assessment, RuleResult};
use safeguard_core::Judgement;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::input::{self, BodyKind};
use crate::judge::{judge_images, Spec};
use crate::state::AppState;

/// The JSON request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerateRequest {
    /// One image: base64 or a `data:` URL.
    #[serde(default)]
    pub image: Option<String>,
    /// Several images judged under the same policy (batch form).
    #[serde(default)]
    pub images: Option<Vec<String>>,
    /// A preset name, policy text, or a policy object (`text`, `markdown`, `toml`, `rules`,
    /// `preset` + `allow`/`prohibit`).
    #[serde(default)]
    pub policy: Option<Value>,
    /// `score` (default), `reason` or `json`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `p_unsafe` at or above which the image is unsafe (default 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// The answer for one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModerateResult {
    /// `safe`, `unsafe` or `unassessed`.
    pub verdict: Assessment,
    /// Probability of unsafe, in [0, 1], when the mode scores.
    pub p_unsafe: Option<f64>,
    /// Ids of the prohibited rules the image breaks.
    pub rules_hit: Vec<String>,
    /// Every rule the guard looked at, with status and score.
    pub rules: Vec<RuleResult>,
    /// The model's explanation (reason and json modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// How the verdict was reached, when it matters (fallbacks, rules not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Hex SHA-256 of the policy's prompt text.
    pub policy_hash: String,
    /// The served model.
    pub model: String,
    /// Time from receiving the request to this answer, in milliseconds.
    pub latency_ms: f64,
    /// The guard backend (`local`, `lite`, `remote`).
    pub backend: String,
}

impl ModerateResult {
    /// The result of a judgement.
    pub fn new(j: Judgement, policy_hash: &str, model: &str, start: Instant) -> Self {
        Self {
            verdict: j.verdict,
            p_unsafe: j.p_unsafe,
            rules_hit: j.rules_hit,
            rules: j.rules,
            rationale: j.rationale,
            note: j.note,
            policy_hash: policy_hash.to_string(),
            model: model.to_string(),
            latency_ms: start.elapsed().as_secs_f64() * 1e3,
            backend: j.backend,
        }
    }
}

/// A checked request, whichever body it came in: what gets judged.
#[derive(Debug)]
pub struct ModerateInput {
    /// The decoded (still encoded-image) bytes of every image, in order.
    pub images: Vec<Vec<u8>>,
    /// Answer `{"results": [...]}` (the `images` form, or several multipart images).
    pub batch: bool,
    /// Policy, mode and threshold.
    pub spec: Spec,
}

/// Parses a JSON body: syntax and types are 400 `invalid_json`, bad values 400
/// `invalid_request`/`invalid_policy`/`invalid_image`/`policy_too_large`, more than
/// `max_images` images 400 `too_many_images`. Never panics (property-tested); images are only
/// base64-decoded here, their pixels are checked when judged.
pub fn parse_request(body: &[u8], max_images: usize) -> Result<ModerateInput, ApiError> {
    from_json(input::parse_json(body)?, max_images)
}

/// The handler.
pub async fn handler(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let start = Instant::now();
    match moderate(&state, req, start).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn moderate(state: &AppState, req: Request, start: Instant) -> Result<Response, ApiError> {
    let parsed = match input::body_kind(&req, &[BodyKind::Json, BodyKind::Multipart])? {
        BodyKind::Json => parse_request(
            &input::body_bytes(req, state.config.max_body_bytes).await?,
            state.config.max_images_per_request,
        )?,
        BodyKind::Multipart => {
            let config = &state.config;
            from_multipart(req, config.max_images_per_request, config.max_body_bytes).await?
        }
    };
    let results = judge_images(state, parsed.images, &parsed.spec).await?;
    let to_result =
        |j: Judgement| ModerateResult::new(j, &parsed.spec.policy_hash, &state.model, start);
    if !parsed.batch {
        let result = results
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "no result"))??;
        return Ok(Json(to_result(result)).into_response());
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(j) => serde_json::to_value(to_result(j)).unwrap_or(Value::Null),
            Err(e) => {
                state.counters.record_error(e.code);
                e.body()
            }
        })
        .collect();
    Ok(Json(serde_json::json!({"results": results})).into_response())
}

fn check_count(n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "no image: give `image` or `images`",
        ));
    }
    if n > max {
        return Err(ApiError::new(
            ErrorCode::TooManyImages,
            format!("{n} images in one request; at most {max} are accepted"),
        ));
    }
    Ok(())
}

fn from_json(req: ModerateRequest, max_images: usize) -> Result<ModerateInput, ApiError> {
    let (encoded, batch) = match (req.image, req.images) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give `image` or `images`, not both",
            ))
        }
        (Some(one), None) => (vec![one], false),
        (None, Some(many)) => (many, true),
        (None, None) => (Vec::new(), false),
    };
    check_count(encoded.len(), max_images)?;
    let policy = req.policy.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "missing `policy`: a preset name (L1-L5, openai, llavaguard, unsafebench), policy text, or an object",
        )
    })?;
    let policy = input::parse_policy(&policy)?;
    let format = input::parse_mode(req.mode.as_deref())?;
    let threshold = input::parse_threshold(req.threshold)?;
    let images = encoded
        .iter()
        .map(|s| input::decode_image(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModerateInput {
        images,
        batch,
        spec: Spec::new(policy, format, threshold),
    })
}

async fn from_multipart(
    req: Request,
    max_images: usize,
    max_body_bytes: usize,
) -> Result<ModerateInput, ApiError> {
    let mut mp = input::multipart(req, max_body_bytes).await?;
    let mut images = Vec::new();
    let (mut policy, mut mode, mut threshold) = (None, None, None);
    while let Some(field) = mp.next_field().await.map_err(input::multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" | "images" | "image[]" => {
                let bytes = field.bytes().await.map_err(input::multipart_error)?;
                images.push(bytes.to_vec());
                check_count(images.len(), max_images).or_else(|e| match e.code {
                    ErrorCode::InvalidRequest => Ok(()),
                    _ => Err(e),
                })?;
            }
            "policy" | "mode" | "threshold" => {
                let text = field.text().await.map_err(input::multipart_error)?;
                match name.as_str() {
                    "policy" => policy = Some(text),
                    "mode" => mode = Some(text),
                    _ => threshold = Some(text),
                }
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "unknown multipart field {:?}; expected image, policy, mode, threshold",
                        input::truncate(other, 40)
                    ),
                ))
            }
        }
    }
    check_count(images.len(), max_images)?;
    let policy = policy
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "missing the `policy` field"))?;
    let policy = Arc::new(input::policy_from_string(&policy)?);
    let format = input::parse_mode(mode.as_deref())?;
    let threshold = match threshold {
        None => None,
        Some(t) => Some(t.trim().parse::<f64>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "threshold must be a number in [0, 1]",
            )
        })?),
    };
    let threshold = input::parse_threshold(threshold)?;
    let batch = images.len() > 1;
    for image in &images {
        if image.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidImage,
                "image part is empty",
            ));
        }
    }
    Ok(ModerateInput {
        images,
        batch,
        spec: Spec::new(policy, format, threshold),
    })
}
