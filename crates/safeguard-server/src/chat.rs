//! `POST /v1/chat/completions`: filled in by the chat/metrics work.

use std::sync::Arc;

use axum::Router;

use crate::AppState;

/// The chat routes, merged into [`crate::app`] (empty until the chat work lands).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
}
