//! Reading request bodies: content types, JSON (with errors mapped to `invalid_json`),
//! multipart fields, base64 / data-URL images, policy specifications and modes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use safeguard_core::policy::{presets, MAX_POLICY_BYTES};
use safeguard_core::{Format, Policy, Stance};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// The body kinds the routes accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` (or `application/*+json`).
    Json,
    /// `multipart/form-data`.
    Multipart,
}

/// The kind of the request's body, or 415 when it is none of `accepted`.
pub fn body_kind(req: &Request, accepted: &[BodyKind]) -> Result<BodyKind, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    let kind = if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Some(BodyKind::Json)
    } else if essence == "multipart/form-data" {
        Some(BodyKind::Multipart)
    } else {
        None
    };
    let names: Vec<&str> = accepted
        .iter()
        .map(|k| match k {
            BodyKind::Json => "application/json",
            BodyKind::Multipart => "multipart/form-data",
        })
        .collect();
    match kind {
        Some(k) if accepted.contains(&k) => Ok(k),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content type {:?} is not accepted here; send {}",
                if essence.is_empty() {
                    "(none)"
                } else {
                    essence
                },
                names.join(" or ")
            ),
        )),
    }
}

/// Bytes of an over-limit body read on and dropped, so that a client still sending gets the
/// 413 answer instead of a connection reset under its upload; a body declared larger than
/// `limit` + this is refused without reading (the connection is then closed).
pub const DRAIN_BYTES: usize = 64 << 20;
/// Longest time spent draining an over-limit body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the whole body, at most `limit` bytes (413 `payload_too_large` above it; see
/// [`DRAIN_BYTES`]).
pub async fn body_bytes(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = content_length(req.headers());
    read_limited(req.into_body(), declared, limit).await
}

/// The `Content-Length` a request declares, if any.
fn content_length(headers: &header::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// [`body_bytes`] on a body whose declared length is `declared`.
async fn read_limited(
    mut body: Body,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body over the size limit ({limit} bytes)"),
        )
    };
    if declared.is_some_and(|n| n > (limit + DRAIN_BYTES) as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n.min(limit as u64) as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::new(ErrorCode::InvalidRequest, "cannot read the request body")
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and drops up to [`DRAIN_BYTES`] more of `body`, for at most [`DRAIN_TIME`].
async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Parses JSON; every failure (syntax, nesting over 128 levels, wrong field types) is a 400
/// `invalid_json` whose message quotes no more than 300 characters.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, truncate(&e.to_string(), 300)))
}

/// Opens a multipart body.
///
/// The body is read first within `limit` (as [`body_bytes`]: an over-limit upload is drained so
/// that the client gets its 413), then parsed.
pub async fn multipart(req: Request, limit: usize) -> Result<Multipart, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_limited(body, content_length(&parts.headers), limit).await?;
    Multipart::from_request(Request::from_parts(parts, Body::from(bytes)), &())
        .await
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
}

/// A multipart error: over the body limit → 413, else 400.
pub fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "request body over the size limit",
        )
    } else {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("malformed multipart body: {}", e.body_text()),
        )
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…", &s[..cut])
}

/// The bytes of an image given as base64 or as a `data:…;base64,…` URL.
pub fn decode_image(value: &str) -> Result<Vec<u8>, ApiError> {
    let value = value.trim();
    let payload = if let Some(rest) = value.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidImage, "data URL without a comma"))?;
        if !meta.to_ascii_lowercase().ends_with(";base64") {
            return Err(ApiError::new(
                ErrorCode::InvalidImage,
                "data URL is not base64 (`data:image/png;base64,…` expected)",
            ));
        }
        data
    } else if value.starts_with("http://") || value.starts_with("https://") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedImageUrl,
            "image URLs are not fetched; send the image as base64 or a data: URL",
        ));
    } else {
        value
    };
    let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(cleaned.as_bytes())
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cleaned.trim_end_matches('='))
        })
        .map_err(|_| ApiError::new(ErrorCode::InvalidImage, "image is not valid base64"))?;
    if bytes.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidImage, "image is empty"));
    }
    Ok(bytes)
}

/// The prompt format of a mode name.
pub fn parse_mode(mode: Option<&str>) -> Result<Format, ApiError> {
    match mode.map(|m| m.trim().to_ascii_lowercase()).as_deref() {
        None | Some("score") | Some("verdict") => Ok(Format::Verdict),
        Some("reason") | Some("reasoning") => Ok(Format::Reasoning),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "unknown mode {:?}; expected score, reason or json",
                truncate(other, 40)
            ),
        )),
    }
}

/// A threshold in [0, 1] (default 0.5).
pub fn parse_threshold(t: Option<f64>) -> Result<f64, ApiError> {
    match t {
        None => Ok(0.5),
        Some(t) if (0.0..=1.0).contains(&t) => Ok(t),
        Some(t) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("threshold must be in [0, 1] (got {t})"),
        )),
    }
}

/// A structured policy given inline: `{"rules": [...], "description"?, "exceptions"?, ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InlinePolicy {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: String,
    rules: Vec<safeguard_core::Rule>,
    #[serde(default)]
    exceptions: Vec<String>,
}

/// A preset with some rules switched: `{"preset": "llavaguard", "allow": [...], "prohibit": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetPolicy {
    preset: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    prohibit: Vec<String>,
}

fn policy_err(e: safeguard_core::Error) -> ApiError {
    ApiError::from_core(&e)
}

fn check_len(text: &str) -> Result<(), ApiError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(ApiError::new(
            ErrorCode::PolicyTooLarge,
            format!(
                "policy is {} bytes; at most {MAX_POLICY_BYTES} bytes are accepted",
                text.len()
            ),
        ));
    }
    Ok(())
}

fn preset(name: &str) -> Result<Policy, ApiError> {
    presets::get(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownPolicy,
            format!(
                "unknown policy {:?}; presets: {}",
                truncate(name, 60),
                presets::names().join(", ")
            ),
        )
    })
}

/// A policy from a request: a preset name or raw text (a string with whitespace); or an
/// object: `{"text"}`, `{"markdown"}`, `{"toml"}`, `{"rules": [...]}` or
/// `{"preset", "allow"?, "prohibit"?}`. Never reads files.
pub fn parse_policy(spec: &Value) -> Result<Arc<Policy>, ApiError> {
    let policy = match spec {
        Value::String(s) => policy_from_string(s)?,
        Value::Object(map) => {
            let text_field = |key: &str| map.get(key).and_then(Value::as_str);
            if let Some(text) = text_field("text") {
                check_len(text)?;
                Policy::from_text("custom", text).map_err(policy_err)?
            } else if let Some(text) = text_field("markdown") {
                check_len(text)?;
                Policy::from_markdown("custom", text).map_err(policy_err)?
            } else if let Some(text) = text_field("toml") {
                check_len(text)?;
                Policy::from_toml("custom", text).map_err(policy_err)?
            } else if map.contains_key("preset") {
                let p: PresetPolicy = serde_json::from_value(spec.clone()).map_err(|e| {
                    ApiError::new(ErrorCode::InvalidPolicy, truncate(&e.to_string(), 300))
                })?;
                let mut policy = preset(&p.preset)?;
                for id in &p.allow {
                    policy.set_stance(id, Stance::Allowed).map_err(policy_err)?;
                }
                for id in &p.prohibit {
                    policy
                        .set_stance(id, Stance::Prohibited)
                        .map_err(policy_err)?;
                }
                policy
            } else if map.contains_key("rules") {
                let p: InlinePolicy = serde_json::from_value(spec.clone()).map_err(|e| {
                    ApiError::new(ErrorCode::InvalidPolicy, truncate(&e.to_string(), 300))
                })?;
                let policy = Policy {
                    name: p.name.unwrap_or_else(|| "custom".into()),
                    title: p.title,
                    description: p.description,
                    rules: p.rules,
                    exceptions: p.exceptions,
                };
                policy.validate().map_err(policy_err)?;
                policy
            } else {
                return Err(ApiError::new(
                    ErrorCode::InvalidPolicy,
                    "a policy object needs one of: text, markdown, toml, rules, preset",
                ));
            }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidPolicy,
                "policy must be a preset name, policy text or an object",
            ))
        }
    };
    Ok(Arc::new(policy))
}

/// A policy given as a string (a multipart field or a JSON string): a preset name, a JSON
/// object (when it starts with `{`), or raw text.
pub fn policy_from_string(s: &str) -> Result<Policy, ApiError> {
    check_len(s)?;
    let t = s.trim();
    if t.starts_with('{') {
        let value: Value = parse_json(t.as_bytes())?;
        return parse_policy(&value).map(|p| (*p).clone());
    }
    if let Some(p) = presets::get(t) {
        return Ok(p);
    }
    if !t.contains(char::is_whitespace) {
        return Err(preset(t).unwrap_err());
    }
    Policy::from_text("custom", t).map_err(policy_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_from_base64_and_data_urls() {
        assert_eq!(decode_image("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_image("aGVsbG8").unwrap(), b"hello");
        assert_eq!(
            decode_image("data:image/png;base64,aGVs\nbG8=").unwrap(),
            b"hello"
        );
        let code = |s| decode_image(s).unwrap_err().code;
        assert_eq!(code("data:image/png,hello"), ErrorCode::InvalidImage);
        assert_eq!(code("!!!"), ErrorCode::InvalidImage);
        assert_eq!(code("https://x/y.png"), ErrorCode::UnsupportedImageUrl);
    }

    #[test]
    fn policies_never_come_from_files() {
        let code = |v: Value| parse_policy(&v).unwrap_err().code;
        assert_eq!(code(Value::from("/etc/passwd")), ErrorCode::UnknownPolicy);
        assert_eq!(code(Value::from("L9")), ErrorCode::UnknownPolicy);
        assert_eq!(
            code(Value::from("x ".repeat(MAX_POLICY_BYTES))),
            ErrorCode::PolicyTooLarge
        );
        let p = parse_policy(&serde_json::json!({"preset": "L3", "allow": ["sexual"]})).unwrap();
        assert_eq!(p.rule("sexual").unwrap().stance, Stance::Allowed);
        let p = parse_policy(&serde_json::json!({"rules": [
            {"id": "guns", "title": "Firearms", "stance": "prohibited"}]}))
        .unwrap();
        assert_eq!(p.rules.len(), 1);
        assert_eq!(parse_policy(&Value::from("l3")).unwrap().name, "L3");
    }
}
