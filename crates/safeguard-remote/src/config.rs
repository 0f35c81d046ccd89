//! [`RemoteConfig`]: where the endpoints are and how patiently to ask them.

use std::fmt;
use std::time::Duration;

/// How to reach the endpoints. Build one with [`RemoteConfig::new`] and change the fields
/// that matter; [`crate::RemoteGuard::new`] validates it.
#[derive(Clone)]
pub struct RemoteConfig {
    /// Base URLs such as `http://127.0.0.1:8000/v1`; `/chat/completions` is appended (a URL
    /// that already ends with it is used as is). At least one; `http` or `https`.
    pub endpoints: Vec<String>,
    /// The `model` field sent, as the server names its model (`Qwen/Qwen2.5-VL-7B-Instruct`).
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set. Never logged, never in an error or in
    /// `Debug` output.
    pub api_key: Option<String>,
    /// Limit for one attempt (connect, send, wait, read), not for the whole retried call.
    pub timeout: Duration,
    /// Retries after the first attempt, on connection errors, timeouts, 408, 429 and 5xx.
    /// Each retry goes to the next endpoint.
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one (with jitter, at most
    /// [`MAX_BACKOFF`]). A `Retry-After` header in seconds replaces it, capped at
    /// [`MAX_RETRY_AFTER`].
    pub backoff: Duration,
    /// `max_tokens` for the reasoning and JSON formats (score mode always asks for 1).
    pub max_tokens_reason: u32,
    /// Requests in flight at once within one `judge` batch (whole-policy and per-rule
    /// questions together). At least 1.
    pub concurrency: usize,
}

/// Longest wait between two attempts computed from [`RemoteConfig::backoff`].
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Longest wait honoured from a server's `Retry-After` header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl RemoteConfig {
    /// A configuration with defaults suited to a vLLM or SGLang server on the same network:
    /// no API key, 120 s per attempt (a reasoning answer of 1024 tokens takes a while on a
    /// loaded server), 3 retries, 500 ms first backoff, 1024 tokens for reasoning, 8
    /// requests in flight.
    pub fn new(endpoints: Vec<String>, model: String) -> Self {
        RemoteConfig {
            endpoints,
            model,
            api_key: None,
            timeout: Duration::from_secs(120),
            max_retries: 3,
            backoff: Duration::from_millis(500),
            max_tokens_reason: 1024,
            concurrency: 8,
        }
    }
}

impl fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("endpoints", &self.endpoints)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_tokens_reason", &self.max_tokens_reason)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let mut cfg = RemoteConfig::new(vec!["http://h/v1".into()], "m".into());
        cfg.api_key = Some("sk-secret-123".into());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
