//! [`Counters`]: what the server counts, as plain atomics, for a metrics exporter to read.
//!
//! Every counter only grows, except the gauges [`Counters::queued`] and [`Counters::in_flight`].
//! Reads use `Ordering::Relaxed`: each value is exact, but a snapshot of several values is not
//! taken atomically.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ErrorCode;

/// The routes the server counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /v1/moderate`.
    Moderate,
    /// `POST /v1/moderations`.
    Moderations,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `GET /v1/policies`.
    Policies,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// `GET /openapi.json`.
    OpenApi,
    /// Anything else (404s).
    Other,
}

impl Route {
    /// Every route, in the order of [`Route::index`].
    pub const ALL: [Route; 9] = [
        Route::Moderate,
        Route::Moderations,
        Route::ChatCompletions,
        Route::Policies,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::OpenApi,
        Route::Other,
    ];

    /// The route of a request path.
    pub fn from_path(path: &str) -> Route {
        match path {
            "/v1/moderate" => Route::Moderate,
            "/v1/moderations" => Route::Moderations,
            "/v1/chat/completions" => Route::ChatCompletions,
            "/v1/policies" => Route::Policies,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/openapi.json" => Route::OpenApi,
            _ => Route::Other,
        }
    }

    /// The path, as a metrics label (`other` for unknown paths).
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Moderate => "/v1/moderate",
            Route::Moderations => "/v1/moderations",
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Policies => "/v1/policies",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Other => "other",
        }
    }

    /// Position in [`Route::ALL`].
    pub fn index(self) -> usize {
        Route::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// HTTP status classes `1xx` … `5xx`, as labels, indexed by `status / 100 - 1`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request counts and latencies of one route.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Responses by status class (index `status / 100 - 1`, see [`STATUS_CLASSES`]).
    pub by_status_class: [AtomicU64; 5],
    /// Sum of response times, in microseconds.
    pub latency_us_sum: AtomicU64,
    /// Responses timed (equals the sum of `by_status_class`).
    pub latency_count: AtomicU64,
}

/// Everything the server counts. Shared through [`crate::AppState::counters`].
#[derive(Debug)]
pub struct Counters {
    /// Per route, indexed by [`Route::index`].
    pub routes: [RouteCounters; 9],
    /// Error responses by code, indexed by [`ErrorCode::index`] (labels: [`ErrorCode::as_str`]).
    pub errors: Vec<AtomicU64>,
    /// Jobs queued for the guard and not yet started (gauge).
    pub queued: AtomicU64,
    /// Requests being handled now (gauge).
    pub in_flight: AtomicU64,
    /// Batches the guard ran.
    pub batches: AtomicU64,
    /// Images judged (the sum of all batch sizes).
    pub batch_jobs: AtomicU64,
    /// `batch_sizes[n]` = batches of `n` images (length `max_batch + 1`; index 0 stays 0).
    pub batch_sizes: Vec<AtomicU64>,
    /// Sum of guard batch times, in microseconds.
    pub batch_us_sum: AtomicU64,
    /// Images the guard failed on (errors before any fallback).
    pub guard_errors: AtomicU64,
    /// Answers turned into `unsafe` by `--on-error unsafe`.
    pub fail_closed: AtomicU64,
}

impl Counters {
    /// Zeroed counters for batches of at most `max_batch` images.
    pub fn new(max_batch: usize) -> Self {
        Self {
            routes: Default::default(),
            errors: ErrorCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            queued: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_jobs: AtomicU64::new(0),
            batch_sizes: (0..=max_batch).map(|_| AtomicU64::new(0)).collect(),
            batch_us_sum: AtomicU64::new(0),
            guard_errors: AtomicU64::new(0),
            fail_closed: AtomicU64::new(0),
        }
    }

    /// The counters of one route.
    pub fn route(&self, route: Route) -> &RouteCounters {
        &self.routes[route.index()]
    }

    /// Counts one response.
    pub fn record_response(&self, route: Route, status: u16, elapsed: Duration) {
        let r = self.route(route);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        r.by_status_class[class].fetch_add(1, Ordering::Relaxed);
        r.latency_us_sum
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        r.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one error response.
    pub fn record_error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Error responses with this code so far.
    pub fn errors_with(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()].load(Ordering::Relaxed)
    }

    /// Counts one guard batch.
    pub fn record_batch(&self, size: usize, elapsed: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_jobs.fetch_add(size as u64, Ordering::Relaxed);
        if let Some(slot) = self.batch_sizes.get(size) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.batch_us_sum
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}
