//! The SafeGuard HTTP API (axum).
//!
//! - [`AppState`] holds the guard behind an engine [`Batcher`](safeguard_engine::scheduler::Batcher)
//!   (images that share policy and mode are judged together on one worker thread), the API
//!   keys (SHA-256 hashes), the per-key [`RateLimiter`], the [`ServerConfig`] limits and the
//!   [`Counters`] a metrics exporter reads.
//! - [`app`] builds the [`Router`]: `POST /v1/moderate` ([`moderate`]), the OpenAI-compatible
//!   `POST /v1/moderations` ([`moderations`]), `GET /v1/policies`, `/healthz`, `/readyz` and
//!   `/openapi.json` ([`openapi`]), plus the chat and metrics routes ([`chat`], [`metrics`]).
//! - [`serve`] runs the router on a listener until a shutdown signal, then finishes the
//!   requests in flight; [`serve_loading`] answers "loading" on the same port while the model
//!   loads.
//!
//! Every error is `{"error": {"code", "message"}}` with a stable code ([`ErrorCode`]). Logs
//! name routes, statuses, codes and sizes, never image bytes, API keys or policy texts.

pub mod auth;
pub mod chat;
pub mod counters;
pub mod error;
mod input;
mod judge;
pub mod metrics;
pub mod moderate;
pub mod moderations;
pub mod openapi;
mod policies;
pub mod state;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

pub use auth::{ApiKeys, RateLimiter};
pub use axum::Router;
pub use counters::{Counters, Route};
pub use error::{ApiError, ErrorCode, ServerError};
pub use judge::Spec;
pub use state::{AppState, OnError, ServerConfig};

/// The whole API. Health routes are open; every other route needs a key when keys are
/// configured, and counts against the key's rate limit.
pub fn app(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/moderate", post(moderate::handler))
        .route("/v1/moderations", post(moderations::handler))
        .route("/v1/policies", get(policies::list))
        .route("/openapi.json", get(openapi::handler))
        // other routes: chat.rs / metrics.rs merge here
        .merge(chat::router())
        .merge(metrics::router())
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then stops accepting connections
/// and waits for the requests in flight to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let router = app(Arc::clone(&state));
    serve_router(listener, router, state, shutdown).await
}

/// [`serve`] for a router built from [`app`] with more layers, e.g. [`chat::with_chat`] to
/// answer `/v1/chat/completions` on the local model.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let shutdown = async move {
        shutdown.await;
        state.set_ready(false);
        tracing::info!("shutting down: finishing requests in flight");
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// What the server answers while the model is still loading: `/healthz` 200
/// `{"status": "loading"}`, `/readyz` 503 `{"status": "loading"}`, every other route 503
/// `unavailable` with `Retry-After: 5`. Load balancers see the process alive but not ready.
pub fn loading_app() -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "loading"})) }),
        )
        .route(
            "/readyz",
            get(|| async {
                let body = Json(serde_json::json!({"status": "loading"}));
                (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
            }),
        )
        .fallback(|| async {
            ApiError::new(
                ErrorCode::Unavailable,
                "the model is still loading; retry shortly",
            )
            .retry_after(5)
            .into_response()
        })
}

/// Serves [`loading_app`] on `listener` until `loaded` completes (then finishes the requests in
/// flight), so that a server binds its port before a long model load. Hand the same socket to
/// [`serve`] afterwards (e.g. two handles from `std::net::TcpListener::try_clone`).
pub async fn serve_loading(
    listener: tokio::net::TcpListener,
    loaded: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    axum::serve(listener, loading_app())
        .with_graceful_shutdown(loaded)
        .await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM: the usual `shutdown` argument of [`serve`].
/// Registers the SIGTERM and SIGINT handlers **now** and returns a future that completes on the
/// first of them. Unlike [`shutdown_signal`], whose handlers exist only once it is first polled,
/// a signal that arrives between this call and the first poll is not lost (nor does it kill the
/// process with the default action), so a server can announce itself right after calling it.
pub fn shutdown_signal_now() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Counts every response, applies the request timeout, logs route, status and time.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = Route::from_path(req.uri().path());
    let counters = &state.counters;
    counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let response = match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!(
                "no answer within the request timeout ({:?})",
                state.config.request_timeout
            ),
        )
        .into_response(),
    };
    let elapsed = start.elapsed();
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    let status = response.status().as_u16();
    counters.record_response(route, status, elapsed);
    let code = response.extensions().get::<ErrorCode>().copied();
    if let Some(code) = code {
        counters.record_error(code);
    }
    tracing::info!(
        route = route.as_str(),
        status,
        code = code.map(ErrorCode::as_str),
        ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    response
}

/// Checks `Authorization: Bearer KEY` (when keys are configured), the key's rate limit and the
/// limit on requests handled at once.
async fn authenticate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let client = if state.api_keys.is_empty() {
        0
    } else {
        let key = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match key.and_then(|k| state.api_keys.find(k)) {
            Some(i) => i,
            None => {
                let message = if key.is_none() {
                    "missing API key: send `Authorization: Bearer KEY`"
                } else {
                    "invalid API key"
                };
                let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
        }
    };
    if let Some(limiter) = &state.rate_limiter {
        if let Err(wait) = limiter.check(client) {
            return ApiError::new(
                ErrorCode::RateLimited,
                format!("rate limit exceeded; retry in {wait} s"),
            )
            .retry_after(wait)
            .into_response();
        }
    }
    // Held until the handler has answered (its body read and judged).
    let Ok(_slot) = Arc::clone(&state.request_slots).try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "{} requests are being handled; retry shortly",
                state.config.max_concurrent_requests
            ),
        )
        .retry_after(1)
        .into_response();
    };
    next.run(req).await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        Json(serde_json::json!({"status": "ready", "model": state.model})).into_response()
    } else {
        ApiError::new(ErrorCode::Unavailable, "not ready").into_response()
    }
}

async fn not_found(req: Request) -> ApiError {
    // The path only: query strings may hold anything.
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    let mut response = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
