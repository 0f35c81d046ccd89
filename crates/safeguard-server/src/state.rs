//! [`ServerConfig`] (limits and behaviour) and [`AppState`] (what every handler shares: the
//! guard behind its batcher, keys, limiter, counters).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use safeguard_core::{Error as CoreError, Format, Guard, GuardRequest, Judgement, Policy};
use safeguard_engine::scheduler::{Batcher, BatcherConfig, BatcherStats};
use tokio::sync::oneshot;

use crate::auth::{ApiKeys, RateLimiter};
use crate::counters::Counters;
use crate::error::ServerError;

/// What a request gets when the guard fails on its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Answer the error (500 `guard_error`, 422 `unparsable_output`, …).
    #[default]
    Error,
    /// Fail closed: answer `unsafe`, with a note saying why. Client errors (invalid image or
    /// policy, limits, 429s) are still answered as errors.
    Unsafe,
}

/// Limits and behaviour of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body, in bytes (413 `payload_too_large` above).
    pub max_body_bytes: usize,
    /// Requests per second allowed to each API key (429 `rate_limited` above); `None` = no
    /// limit.
    pub rate_limit: Option<f64>,
    /// Longest time a request may take (504 `timeout` after).
    pub request_timeout: Duration,
    /// How images are batched for the guard; a full queue answers 429 `queue_full`.
    pub batcher: BatcherConfig,
    /// What a guard failure becomes.
    pub on_error: OnError,
    /// Most images in one request (400 `too_many_images` above).
    pub max_images_per_request: usize,
    /// Most API requests handled at once (bodies being read included); more are refused at
    /// once with 503 `overloaded` and `Retry-After: 1`. With the body limit this bounds the
    /// memory that request bodies can take (`max_concurrent_requests × max_body_bytes`).
    /// Health routes do not count.
    pub max_concurrent_requests: usize,
}

impl Default for ServerConfig {
    /// 20 MB bodies, no rate limit, 60 s timeout, the default batcher, errors answered, 64
    /// images per request, 64 requests at once.
    fn default() -> Self {
        Self {
            max_body_bytes: 20 << 20,
            rate_limit: None,
            request_timeout: Duration::from_secs(60),
            batcher: BatcherConfig::default(),
            on_error: OnError::Error,
            max_images_per_request: 64,
            max_concurrent_requests: 64,
        }
    }
}

impl ServerConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: &str| Err(ServerError::Config(m.to_string()));
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes must be at least 1");
        }
        if let Some(r) = self.rate_limit {
            if !(r > 0.0 && r.is_finite()) {
                return bad("rate_limit must be a positive number of requests per second");
            }
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be positive");
        }
        if self.max_images_per_request == 0 {
            return bad("max_images_per_request must be at least 1");
        }
        if self.max_concurrent_requests == 0 {
            return bad("max_concurrent_requests must be at least 1");
        }
        Ok(())
    }
}

/// One image waiting for the guard.
pub struct Job {
    /// The encoded image.
    pub image: Vec<u8>,
    /// The policy (shared by the images of one request).
    pub policy: Arc<Policy>,
    /// [`Policy::hash`] of `policy`: jobs with equal hash and format share batches.
    pub policy_hash: String,
    /// Score, reason or JSON.
    pub format: Format,
    /// `p_unsafe` at or above which the image is unsafe.
    pub threshold: f64,
    /// Where the guard's answer goes.
    pub reply: oneshot::Sender<Result<Judgement, CoreError>>,
}

/// Everything the handlers share.
pub struct AppState {
    /// The guard (also reachable directly, e.g. by the chat routes).
    pub guard: Arc<dyn Guard>,
    /// The model name answered in `model` fields.
    pub model: String,
    /// The guard's batcher: one worker thread runs `guard.judge` on batches of jobs that share
    /// policy and format.
    pub batcher: Batcher<Job, ()>,
    /// Accepted API keys (hashed); empty = open.
    pub api_keys: ApiKeys,
    /// Per-key token buckets, when rate limiting is on.
    pub rate_limiter: Option<RateLimiter>,
    /// Limits and behaviour.
    pub config: ServerConfig,
    /// Counters for the metrics route.
    pub counters: Arc<Counters>,
    /// One permit per API request being handled ([`ServerConfig::max_concurrent_requests`]).
    pub request_slots: Arc<tokio::sync::Semaphore>,
    ready: AtomicBool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("guard", &self.guard.name())
            .field("model", &self.model)
            .field("api_keys", &self.api_keys)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Starts the batcher over `guard`; the state is ready when this returns.
    pub fn new(
        guard: Arc<dyn Guard>,
        model: impl Into<String>,
        api_keys: ApiKeys,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let counters = Arc::new(Counters::new(config.batcher.max_batch));
        let batcher = {
            let guard = Arc::clone(&guard);
            let counters = Arc::clone(&counters);
            Batcher::with_key(config.batcher, batch_key, move |jobs: Vec<Job>| {
                run_batch(guard.as_ref(), &counters, jobs)
            })?
        };
        let rate_limiter = config.rate_limit.map(RateLimiter::new);
        let request_slots = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests));
        Ok(Self {
            request_slots,
            guard,
            model: model.into(),
            batcher,
            api_keys,
            rate_limiter,
            config,
            counters,
            ready: AtomicBool::new(true),
        })
    }

    /// Whether `/readyz` answers 200: the guard is loaded and the batcher runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the server (un)ready, e.g. while shutting down.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The batcher's own counters (exact queue depth, batch-size histogram).
    pub fn batcher_stats(&self) -> BatcherStats {
        self.batcher.stats()
    }
}

fn batch_key(job: &Job) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    job.policy_hash.hash(&mut h);
    std::mem::discriminant(&job.format).hash(&mut h);
    h.finish()
}

/// Runs on the batcher's worker thread: judges the batch, sends each answer to its caller.
fn run_batch(guard: &dyn Guard, counters: &Counters, jobs: Vec<Job>) -> Vec<()> {
    let n = jobs.len();
    counters
        .queued
        .fetch_sub(n as u64, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let results = {
        let requests: Vec<GuardRequest<'_>> = jobs
            .iter()
            .map(|j| GuardRequest {
                image: &j.image,
                policy: &j.policy,
                format: j.format,
                threshold: j.threshold,
            })
            .collect();
        safeguard_core::guard::judge_checked(guard, &requests)
    };
    counters.record_batch(n, start.elapsed());
    let got = results.len();
    let mut results = results.into_iter();
    for job in jobs {
        let result = results.next().unwrap_or_else(|| {
            Err(CoreError::Backend {
                backend: guard.name().to_string(),
                message: format!("returned {got} results for {n} images"),
            })
        });
        if result.is_err() {
            counters
                .guard_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // The caller may have timed out and gone: nothing to do then.
        let _ = job.reply.send(result);
    }
    vec![(); n]
}
