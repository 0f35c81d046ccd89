//! `GET /metrics` (Prometheus text from [`crate::Counters`]): filled in by the chat/metrics work.

use std::sync::Arc;

use axum::Router;

use crate::AppState;

/// The metrics routes, merged into [`crate::app`] (empty until the metrics work lands).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
}
