//! Errors: [`ApiError`] (what a client receives: `{"error": {"code", "message"}}` with an HTTP
//! status) and [`ServerError`] (what can fail while building the server).
//!
//! Each [`ErrorCode`] is a stable snake_case string and maps to one status in
//! [`ErrorCode::status`]; clients match on the code, never on the message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use safeguard_core::Error as CoreError;
use safeguard_engine::scheduler::SchedulerError;

/// The stable code of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 401: no `Authorization: Bearer KEY`, or a key that is not configured.
    Unauthorized,
    /// 400: the body is not valid JSON (syntax, nesting deeper than 128 levels, wrong types).
    InvalidJson,
    /// 400: the request is well-formed JSON but a field is missing or out of range.
    InvalidRequest,
    /// 400: an image that is not base64/a data URL, cannot be decoded, or breaks the decode
    /// limits (dimensions, pixels, memory).
    InvalidImage,
    /// 400: `/v1/moderations` input with no image part (the guard judges images).
    ImageRequired,
    /// 400: an `image_url` that is not a `data:` URL (the server fetches nothing).
    UnsupportedImageUrl,
    /// 400: more images in one request than `max_images_per_request`.
    TooManyImages,
    /// 400: a policy name that is no preset.
    UnknownPolicy,
    /// 400: a policy that does not parse or breaks the policy rules.
    InvalidPolicy,
    /// 413: a policy over 64 KiB.
    PolicyTooLarge,
    /// 413: a body over `--max-body-bytes`.
    PayloadTooLarge,
    /// 415: a content type the route does not accept.
    UnsupportedMediaType,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists with another method.
    MethodNotAllowed,
    /// 429: the key sent more than `--rate-limit` requests per second.
    RateLimited,
    /// 429: the guard's queue is full; retry later.
    QueueFull,
    /// 422: the model's output held no verdict (reason/json modes).
    UnparsableOutput,
    /// 500: the guard failed.
    GuardError,
    /// 500: a bug in the server.
    Internal,
    /// 503: the server is shutting down.
    Unavailable,
    /// 504: no answer within `--request-timeout`.
    Timeout,
    /// 501: chat completions need the local model; this server runs another guard.
    ChatUnavailable,
    /// 503: `--max-concurrent-requests` requests are being handled; retry shortly.
    Overloaded,
}

impl ErrorCode {
    /// Every code, in the order of [`ErrorCode::index`].
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::Unauthorized,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidImage,
        ErrorCode::ImageRequired,
        ErrorCode::UnsupportedImageUrl,
        ErrorCode::TooManyImages,
        ErrorCode::UnknownPolicy,
        ErrorCode::InvalidPolicy,
        ErrorCode::PolicyTooLarge,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RateLimited,
        ErrorCode::QueueFull,
        ErrorCode::UnparsableOutput,
        ErrorCode::GuardError,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::ChatUnavailable,
        ErrorCode::Overloaded,
    ];

    /// The code as it appears in error bodies and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidImage => "invalid_image",
            ErrorCode::ImageRequired => "image_required",
            ErrorCode::UnsupportedImageUrl => "unsupported_image_url",
            ErrorCode::TooManyImages => "too_many_images",
            ErrorCode::UnknownPolicy => "unknown_policy",
            ErrorCode::InvalidPolicy => "invalid_policy",
            ErrorCode::PolicyTooLarge => "policy_too_large",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::UnparsableOutput => "unparsable_output",
            ErrorCode::GuardError => "guard_error",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ChatUnavailable => "chat_unavailable",
            ErrorCode::Overloaded => "overloaded",
        }
    }

    /// Position in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        ErrorCode::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidJson
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidImage
            | ErrorCode::ImageRequired
            | ErrorCode::UnsupportedImageUrl
            | ErrorCode::TooManyImages
            | ErrorCode::UnknownPolicy
            | ErrorCode::InvalidPolicy => StatusCode::BAD_REQUEST,
            ErrorCode::PolicyTooLarge | ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RateLimited | ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::UnparsableOutput => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::GuardError | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable | ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ChatUnavailable => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// An error answered to a client: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The stable code (decides the status).
    pub code: ErrorCode,
    /// What went wrong and how to fix it. Never holds image bytes, keys or policy texts.
    pub message: String,
    /// Seconds for a `Retry-After` header (429s).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header, in seconds.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }

    /// A guard or policy error from the core crate. Policy errors never quote the policy.
    pub fn from_core(e: &CoreError) -> Self {
        let code = match e {
            CoreError::InvalidImage { .. } => ErrorCode::InvalidImage,
            CoreError::Unparsable { .. } => ErrorCode::UnparsableOutput,
            CoreError::TooLarge { .. } => ErrorCode::PolicyTooLarge,
            CoreError::UnknownPreset { .. } => ErrorCode::UnknownPolicy,
            CoreError::Empty
            | CoreError::TooManyRules { .. }
            | CoreError::BadRuleId { .. }
            | CoreError::EmptyRuleTitle { .. }
            | CoreError::DuplicateRule { .. }
            | CoreError::UnknownRule { .. }
            | CoreError::Markdown { .. }
            | CoreError::Toml { .. } => ErrorCode::InvalidPolicy,
            _ => ErrorCode::GuardError,
        };
        let mut message = e.to_string();
        if message.len() > 1000 {
            let cut = (0..=1000).rev().find(|&i| message.is_char_boundary(i));
            message.truncate(cut.unwrap_or(0));
            message.push('…');
        }
        ApiError::new(code, message)
    }

    /// A batcher error.
    pub fn from_scheduler(e: &SchedulerError) -> Self {
        match e {
            SchedulerError::QueueFull { capacity } => ApiError::new(
                ErrorCode::QueueFull,
                format!("the guard's queue is full ({capacity} images waiting); retry later"),
            )
            .retry_after(1),
            SchedulerError::ShutDown => {
                ApiError::new(ErrorCode::Unavailable, "the server is shutting down")
            }
            other => ApiError::new(ErrorCode::GuardError, other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code.status(), axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(self.code);
        response
    }
}

/// What can fail while building the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The batcher could not start (bad sizes, no thread).
    #[error("cannot start the batcher: {0}")]
    Batcher(#[from] SchedulerError),
    /// An API key file that cannot be read or holds no key.
    #[error("API key file {}: {message}", path.display())]
    ApiKeys {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A configuration value out of range.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// Serving failed (the listener broke).
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}
