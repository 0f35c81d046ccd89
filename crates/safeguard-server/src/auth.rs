//! API keys and per-key rate limits.
//!
//! [`ApiKeys`] keeps only the SHA-256 of each key and compares hashes in constant time
//! ([`subtle`]), so neither the keys nor their timing leak. [`RateLimiter`] is one token bucket
//! per key: `rate` tokens a second, bursts of `max(rate, 1)`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ServerError;

/// The accepted API keys, as SHA-256 hashes. Empty = no authentication.
#[derive(Clone, Default)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.hashes.len())
    }
}

impl ApiKeys {
    /// No keys: every request is accepted.
    pub fn none() -> Self {
        Self::default()
    }

    /// These keys (blank ones are skipped).
    pub fn from_keys<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Self {
        let hashes = keys
            .into_iter()
            .map(|k| k.as_ref().trim().to_string())
            .filter(|k| !k.is_empty())
            .map(|k| hash(&k))
            .collect();
        Self { hashes }
    }

    /// One key per line; blank lines and lines starting with `#` are skipped. A file without
    /// any key is an error (it would silently turn authentication off).
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let err = |message: String| ServerError::ApiKeys {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let keys = Self::from_keys(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        );
        if keys.is_empty() {
            return Err(err("holds no key (one key per line)".into()));
        }
        Ok(keys)
    }

    /// Whether authentication is off.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The index of the key, when it is one of ours. Compares against every stored hash in
    /// constant time.
    pub fn find(&self, key: &str) -> Option<usize> {
        let h = hash(key);
        let mut found = None;
        for (i, stored) in self.hashes.iter().enumerate() {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(i);
            }
        }
        found
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A token bucket per client (API key index; one shared bucket without keys).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<usize, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` requests a second per client, bursts of `max(rate, 1)`.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            burst: rate.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`, or returns the seconds until one is available.
    pub fn check(&self, client: usize) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_themselves() {
        let keys = ApiKeys::from_keys(["alpha", " beta ", ""]);
        assert_eq!(keys.find("alpha"), Some(0));
        assert_eq!(keys.find("beta"), Some(1));
        assert_eq!(keys.find("gamma"), None);
        assert_eq!(keys.find(""), None);
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn bucket_refuses_past_the_burst() {
        let limiter = RateLimiter::new(2.0);
        assert!(limiter.check(0).is_ok());
        assert!(limiter.check(0).is_ok());
        assert_eq!(limiter.check(0), Err(1));
        assert!(limiter.check(1).is_ok(), "buckets are per client");
    }
}
