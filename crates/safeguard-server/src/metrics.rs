//! `GET /metrics`: the server's [`Counters`], the batcher's stats and (with the local model
//! attached for chat, [`ChatHandle`]) the policy-prefix cache and chat counters, in the
//! Prometheus text exposition format (version 0.0.4), written by hand from the atomics.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `safeguard_requests_total` | counter | `route`, `status` (`2xx` … `5xx`) |
//! | `safeguard_request_duration_seconds` | summary (sum, count) | `route` |
//! | `safeguard_errors_total` | counter | `code` |
//! | `safeguard_in_flight_requests`, `safeguard_queue_depth` | gauge | |
//! | `safeguard_batch_size` | histogram (buckets 1, 2, 4, … max batch) | |
//! | `safeguard_batch_duration_seconds` | summary | |
//! | `safeguard_queue_rejected_total`, `safeguard_guard_errors_total`, `safeguard_fail_closed_total` | counter | |
//! | `safeguard_prefix_cache_{hits,misses,evictions}_total` | counter | |
//! | `safeguard_prefix_cache_{entries,bytes,budget_bytes}` | gauge | |
//! | `safeguard_chat_{active,waiting}` | gauge | |
//! | `safeguard_chat_{prompt_tokens,completion_tokens,cancelled}_total` | counter | |

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use safeguard_engine::prefix_cache::PrefixCacheStats;
use safeguard_engine::scheduler::BatcherStats;

use crate::chat::ChatHandle;
use crate::counters::{Counters, Route, STATUS_CLASSES};
use crate::error::ErrorCode;
use crate::AppState;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics routes, merged into [`crate::app`].
pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(handler))
}

async fn handler(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let chat = req.extensions().get::<ChatHandle>();
    let cache = chat.map(|c| c.guard().cache_stats());
    let text = render(
        &state.counters,
        &state.batcher_stats(),
        cache.as_ref(),
        chat,
    );
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Writes `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one single-sample family.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The exposition text of everything the server counts (`cache` and `chat` when the local
/// model is attached).
pub fn render(
    counters: &Counters,
    batcher: &BatcherStats,
    cache: Option<&PrefixCacheStats>,
    chat: Option<&ChatHandle>,
) -> String {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(8192);

    family(
        &mut out,
        "safeguard_requests_total",
        "counter",
        "HTTP responses by route and status class.",
    );
    for route in Route::ALL {
        let r = counters.route(route);
        for (class, label) in STATUS_CLASSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "safeguard_requests_total{{route=\"{}\",status=\"{label}\"}} {}",
                route.as_str(),
                load(&r.by_status_class[class])
            );
        }
    }

    family(
        &mut out,
        "safeguard_request_duration_seconds",
        "summary",
        "Time from receiving a request to its response, by route.",
    );
    for route in Route::ALL {
        let r = counters.route(route);
        let label = route.as_str();
        let sum = load(&r.latency_us_sum) as f64 / 1e6;
        let _ = writeln!(
            out,
            "safeguard_request_duration_seconds_sum{{route=\"{label}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "safeguard_request_duration_seconds_count{{route=\"{label}\"}} {}",
            load(&r.latency_count)
        );
    }

    family(
        &mut out,
        "safeguard_errors_total",
        "counter",
        "Error responses by error code.",
    );
    for code in ErrorCode::ALL {
        let _ = writeln!(
            out,
            "safeguard_errors_total{{code=\"{}\"}} {}",
            code.as_str(),
            counters.errors_with(code)
        );
    }

    single(
        &mut out,
        "safeguard_in_flight_requests",
        "gauge",
        "Requests being handled now.",
        load(&counters.in_flight),
    );
    single(
        &mut out,
        "safeguard_queue_depth",
        "gauge",
        "Images waiting for the guard's batcher.",
        batcher.queue_depth,
    );
    single(
        &mut out,
        "safeguard_queue_rejected_total",
        "counter",
        "Images refused because the guard's queue was full.",
        batcher.rejected,
    );

    family(
        &mut out,
        "safeguard_batch_size",
        "histogram",
        "Images per guard batch.",
    );
    let max = batcher.batch_sizes.len().saturating_sub(1).max(1);
    let mut bounds: Vec<usize> = std::iter::successors(Some(1usize), |b| b.checked_mul(2))
        .take_while(|&b| b < max)
        .collect();
    bounds.push(max);
    for bound in bounds {
        let below: u64 = batcher.batch_sizes.iter().take(bound + 1).sum();
        let _ = writeln!(out, "safeguard_batch_size_bucket{{le=\"{bound}\"}} {below}");
    }
    let _ = writeln!(
        out,
        "safeguard_batch_size_bucket{{le=\"+Inf\"}} {}",
        batcher.batches
    );
    let _ = writeln!(out, "safeguard_batch_size_sum {}", batcher.jobs_run);
    let _ = writeln!(out, "safeguard_batch_size_count {}", batcher.batches);

    family(
        &mut out,
        "safeguard_batch_duration_seconds",
        "summary",
        "Time the guard took per batch.",
    );
    let _ = writeln!(
        out,
        "safeguard_batch_duration_seconds_sum {}",
        load(&counters.batch_us_sum) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "safeguard_batch_duration_seconds_count {}",
        load(&counters.batches)
    );

    single(
        &mut out,
        "safeguard_guard_errors_total",
        "counter",
        "Images the guard failed on (before any --on-error fallback).",
        load(&counters.guard_errors),
    );
    single(
        &mut out,
        "safeguard_fail_closed_total",
        "counter",
        "Answers turned into unsafe by --on-error unsafe.",
        load(&counters.fail_closed),
    );

    if let Some(cache) = cache {
        let rows: [(&str, &str, &str, u64); 6] = [
            (
                "safeguard_prefix_cache_hits_total",
                "counter",
                "Policy-prefix lookups answered from the cache.",
                cache.hits,
            ),
            (
                "safeguard_prefix_cache_misses_total",
                "counter",
                "Policy-prefix lookups that computed the prefix.",
                cache.misses,
            ),
            (
                "safeguard_prefix_cache_evictions_total",
                "counter",
                "Prefix-cache entries dropped to stay within the budget.",
                cache.evictions,
            ),
            (
                "safeguard_prefix_cache_entries",
                "gauge",
                "Prefixes held in the cache.",
                cache.entries as u64,
            ),
            (
                "safeguard_prefix_cache_bytes",
                "gauge",
                "Bytes of keys and values held in the prefix cache.",
                cache.bytes as u64,
            ),
            (
                "safeguard_prefix_cache_budget_bytes",
                "gauge",
                "Budget of the prefix cache in bytes.",
                cache.budget as u64,
            ),
        ];
        for (name, kind, help, value) in rows {
            single(&mut out, name, kind, help, value);
        }
    }

    if let Some(chat) = chat {
        let s = &chat.stats;
        let rows = [
            (
                "safeguard_chat_active",
                "gauge",
                "Chat generations running now.",
                &s.active,
            ),
            (
                "safeguard_chat_waiting",
                "gauge",
                "Chat requests waiting for a generation slot.",
                &s.waiting,
            ),
            (
                "safeguard_chat_prompt_tokens_total",
                "counter",
                "Prompt tokens of finished chat generations.",
                &s.prompt_tokens,
            ),
            (
                "safeguard_chat_completion_tokens_total",
                "counter",
                "Tokens generated by finished chat generations.",
                &s.completion_tokens,
            ),
            (
                "safeguard_chat_cancelled_total",
                "counter",
                "Chat generations cancelled because the client went away.",
                &s.cancelled,
            ),
        ];
        for (name, kind, help, value) in rows {
            single(&mut out, name, kind, help, load(value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_histogram_is_cumulative() {
        let counters = Counters::new(8);
        let stats = BatcherStats {
            submitted: 7,
            rejected: 1,
            batches: 3,
            jobs_run: 7,
            failed_batches: 0,
            batch_sizes: vec![0, 1, 0, 1, 0, 0, 0, 0, 1],
            queue_depth: 2,
        };
        let text = render(&counters, &stats, None, None);
        for line in [
            "safeguard_batch_size_bucket{le=\"1\"} 1",
            "safeguard_batch_size_bucket{le=\"2\"} 1",
            "safeguard_batch_size_bucket{le=\"4\"} 2",
            "safeguard_batch_size_bucket{le=\"8\"} 3",
            "safeguard_batch_size_bucket{le=\"+Inf\"} 3",
            "safeguard_batch_size_sum 7",
            "safeguard_queue_depth 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(!text.contains("prefix_cache"));
    }
}
