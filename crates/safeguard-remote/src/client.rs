//! [`Client`]: posts one chat-completions body to the endpoints, round-robin with a health
//! penalty, retrying transient failures on the next endpoint with exponential backoff.

use std::error::Error as StdError;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use safeguard_core::Error;
use serde_json::Value;

use crate::config::{RemoteConfig, MAX_BACKOFF, MAX_RETRY_AFTER};
use crate::wire::{server_message, truncate, ChatResponse};
use crate::NAME;

/// How long an endpoint that failed stays behind the healthy ones in the rotation.
pub const HEALTH_PENALTY: Duration = Duration::from_secs(30);

/// Suffix appended to each base URL.
const CHAT_PATH: &str = "/chat/completions";

/// One endpoint and when it last failed.
#[derive(Debug)]
struct Endpoint {
    /// The full chat-completions URL (no credentials: [`parse_endpoint`] refuses them).
    url: String,
    failed_at: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn healthy(&self) -> bool {
        match *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(at) => at.elapsed() >= HEALTH_PENALTY,
            None => true,
        }
    }

    fn mark(&self, failed: bool) {
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = failed.then(Instant::now);
    }
}

/// The HTTP side of the remote guard.
pub struct Client {
    agent: ureq::Agent,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    api_key: Option<String>,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth trying again (elsewhere, later).
    Transient {
        reason: String,
        status: Option<u16>,
        source: Option<Box<dyn StdError + Send + Sync>>,
        retry_after: Option<Duration>,
    },
    /// Asking again would get the same answer.
    Final(Error),
}

fn config_error(message: String) -> Error {
    Error::Backend {
        backend: NAME.to_string(),
        message,
    }
}

/// The chat-completions URL for a base URL, or why it cannot be used.
pub fn parse_endpoint(base: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::Remote {
        endpoint: if base.contains('@') {
            "<URL with credentials, not shown>".to_string()
        } else {
            base.to_string()
        },
        reason: reason.to_string(),
        status: None,
        source: None,
    };
    let url = url::Url::parse(base.trim()).map_err(|e| {
        bad(&format!(
            "not a URL ({e}); expected e.g. http://127.0.0.1:8000/v1"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// endpoints are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "the URL carries credentials; pass the key as the API key (SAFEGUARD_API_KEY) instead",
        ));
    }
    let trimmed = url.as_str().trim_end_matches('/');
    Ok(if trimmed.ends_with(CHAT_PATH) {
        trimmed.to_string()
    } else {
        format!("{trimmed}{CHAT_PATH}")
    })
}

impl Client {
    /// Validates `cfg` and builds the HTTP agent.
    pub fn new(cfg: &RemoteConfig) -> Result<Self, Error> {
        if cfg.endpoints.is_empty() {
            return Err(config_error(
                "no endpoint given; pass at least one base URL such as http://127.0.0.1:8000/v1"
                    .to_string(),
            ));
        }
        if cfg.model.trim().is_empty() {
            return Err(config_error(
                "no model name given; use the name the server serves (e.g. Qwen/Qwen2.5-VL-7B-Instruct)".to_string(),
            ));
        }
        if cfg.timeout.is_zero() {
            return Err(config_error("the timeout must be above zero".to_string()));
        }
        if cfg.concurrency == 0 {
            return Err(config_error("concurrency must be at least 1".to_string()));
        }
        if cfg.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(config_error("the API key is empty".to_string()));
        }
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|base| {
                Ok(Endpoint {
                    url: parse_endpoint(base)?,
                    failed_at: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let agent = ureq::AgentBuilder::new()
            .timeout(cfg.timeout)
            .max_idle_connections_per_host(cfg.concurrency.max(2))
            .user_agent(concat!("safeguard-remote/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent,
            endpoints,
            next: AtomicUsize::new(0),
            api_key: cfg.api_key.as_ref().map(|k| k.trim().to_string()),
            timeout: cfg.timeout,
            max_retries: cfg.max_retries,
            backoff: cfg.backoff,
        })
    }

    /// The order in which one call tries the endpoints: round-robin from the next start,
    /// endpoints that failed within [`HEALTH_PENALTY`] last.
    fn order(&self) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        order.sort_by_key(|&i| !self.endpoints[i].healthy());
        order
    }

    /// Posts `body`, retrying transient failures (each retry on the next endpoint), and
    /// returns the parsed response.
    pub fn post(&self, body: &Value) -> Result<ChatResponse, Error> {
        let text = body.to_string();
        let order = self.order();
        let attempts = self.max_retries.saturating_add(1);
        let mut tried: Vec<&str> = Vec::new();
        let mut last = None;
        for attempt in 0..attempts {
            let index = order[attempt as usize % order.len()];
            let endpoint = &self.endpoints[index];
            if !tried.contains(&endpoint.url.as_str()) {
                tried.push(&endpoint.url);
            }
            match self.attempt(endpoint, &text) {
                Ok(response) => {
                    endpoint.mark(false);
                    return Ok(response);
                }
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient {
                    reason,
                    status,
                    source,
                    retry_after,
                }) => {
                    endpoint.mark(true);
                    if attempt + 1 < attempts {
                        std::thread::sleep(self.delay(attempt, retry_after));
                    }
                    last = Some((index, reason, status, source));
                }
            }
        }
        let (index, reason, status, source) = last.expect("at least one attempt");
        Err(Error::Remote {
            endpoint: self.endpoints[index].url.clone(),
            reason: format!(
                "{reason} (gave up after {attempts} attempt{}; tried {})",
                if attempts == 1 { "" } else { "s" },
                tried.join(", ")
            ),
            status,
            source,
        })
    }

    /// The wait before retry `attempt + 1`: the server's `Retry-After` (capped), else the
    /// backoff doubled per retry, plus up to half again of jitter, capped.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(MAX_RETRY_AFTER);
        }
        let base = self
            .backoff
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(MAX_BACKOFF);
        base.mul_f64(1.0 + rand::random::<f64>() * 0.5)
            .min(MAX_BACKOFF)
    }

    fn attempt(&self, endpoint: &Endpoint, body: &str) -> Result<ChatResponse, Failure> {
        let mut request = self
            .agent
            .post(&endpoint.url)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        match request.send_string(body) {
            Ok(response) => {
                let text = response
                    .into_string()
                    .map_err(|e| self.transport_failure(Box::new(e)))?;
                let parsed = serde_json::from_str::<ChatResponse>(&text).map_err(|e| {
                    Failure::Final(Error::Remote {
                        endpoint: endpoint.url.clone(),
                        reason: format!(
                            "the answer is not a chat completion ({e}); it starts {:?}",
                            truncate(&text, 200)
                        ),
                        status: None,
                        source: Some(Box::new(e)),
                    })
                })?;
                if parsed.choices.is_empty() {
                    return Err(Failure::Final(Error::Remote {
                        endpoint: endpoint.url.clone(),
                        reason: "the answer has no choices".to_string(),
                        status: None,
                        source: None,
                    }));
                }
                Ok(parsed)
            }
            Err(ureq::Error::Status(code, response)) => {
                let retry_after = response
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = response.into_string().unwrap_or_default();
                let reason = format!("HTTP {code}: {}", server_message(&body));
                if code == 408 || code == 429 || code >= 500 {
                    Err(Failure::Transient {
                        reason,
                        status: Some(code),
                        source: None,
                        retry_after,
                    })
                } else {
                    Err(Failure::Final(Error::Remote {
                        endpoint: endpoint.url.clone(),
                        reason: match code {
                            401 | 403 => format!(
                                "{reason} (check the API key: SAFEGUARD_API_KEY)"
                            ),
                            404 => format!("{reason} (check the URL, usually ending in /v1, and the model name)"),
                            _ => reason,
                        },
                        status: Some(code),
                        source: None,
                    }))
                }
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind as K;
                let retry = matches!(
                    t.kind(),
                    K::Dns | K::ConnectionFailed | K::Io | K::ProxyConnect | K::BadStatus
                );
                if retry {
                    Err(self.transport_failure(Box::new(t)))
                } else {
                    Err(Failure::Final(Error::Remote {
                        endpoint: endpoint.url.clone(),
                        reason: t.to_string(),
                        status: None,
                        source: Some(Box::new(t)),
                    }))
                }
            }
        }
    }

    fn transport_failure(&self, source: Box<dyn StdError + Send + Sync>) -> Failure {
        let reason = if is_timeout(source.as_ref()) {
            format!("timed out after {} ms", self.timeout.as_millis())
        } else {
            format!("connection failed: {}", root_cause(source.as_ref()))
        };
        Failure::Transient {
            reason,
            status: None,
            source: Some(source),
            retry_after: None,
        }
    }
}

/// Whether an I/O timeout is somewhere in the chain.
fn is_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        if e.to_string().contains("timed out") {
            return true;
        }
        current = e.source();
    }
    false
}

/// The innermost error's message.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_chat_path_once() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:8000/v1").unwrap(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(
            parse_endpoint("https://h.example/v1/").unwrap(),
            "https://h.example/v1/chat/completions"
        );
        assert_eq!(
            parse_endpoint("http://h:1/v1/chat/completions").unwrap(),
            "http://h:1/v1/chat/completions"
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for (url, why) in [
            ("127.0.0.1:8000", "http"),
            ("ftp://h/v1", "http"),
            ("not a url", "not a URL"),
            ("http://user:secret@h/v1", "credentials"),
        ] {
            let err = parse_endpoint(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn config_is_validated() {
        let ok = RemoteConfig::new(vec!["http://h/v1".into()], "m".into());
        assert!(Client::new(&ok).is_ok());
        let mut c = ok.clone();
        c.endpoints.clear();
        assert!(Client::new(&c)
            .unwrap_err()
            .to_string()
            .contains("no endpoint"));
        let mut c = ok.clone();
        c.model = " ".into();
        assert!(Client::new(&c).unwrap_err().to_string().contains("model"));
        let mut c = ok.clone();
        c.concurrency = 0;
        assert!(Client::new(&c).is_err());
        let mut c = ok;
        c.timeout = Duration::ZERO;
        assert!(Client::new(&c).is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut cfg = RemoteConfig::new(vec!["http://h/v1".into()], "m".into());
        cfg.backoff = Duration::from_millis(100);
        let client = Client::new(&cfg).unwrap();
        for attempt in 0..4 {
            let base = Duration::from_millis(100 << attempt);
            let d = client.delay(attempt, None);
            assert!(d >= base && d <= base.mul_f64(1.5), "{attempt}: {d:?}");
        }
        assert!(client.delay(40, None) <= MAX_BACKOFF);
        assert_eq!(
            client.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            client.delay(0, Some(Duration::from_secs(100_000))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn failed_endpoints_go_last() {
        let cfg = RemoteConfig::new(
            vec![
                "http://a/v1".into(),
                "http://b/v1".into(),
                "http://c/v1".into(),
            ],
            "m".into(),
        );
        let client = Client::new(&cfg).unwrap();
        assert_eq!(client.order(), [0, 1, 2]);
        assert_eq!(client.order(), [1, 2, 0]);
        client.endpoints[2].mark(true);
        assert_eq!(client.order(), [0, 1, 2]);
        assert_eq!(client.order(), [0, 1, 2], "start 0 rotated, c still last");
        assert_eq!(client.order(), [1, 0, 2]);
        client.endpoints[2].mark(false);
        assert_eq!(client.order(), [2, 0, 1]);
    }
}
