//! `GET /v1/policies`: the built-in policies with their rules.

use axum::Json;
use safeguard_core::policy::presets::{self, PRESETS};
use serde_json::{json, Value};

/// `{"policies": [{name, title, summary, hash, rules: [{id, title, stance, description}]}]}`.
pub async fn list() -> Json<Value> {
    let policies: Vec<Value> = PRESETS
        .iter()
        .filter_map(|p| {
            let policy = presets::get(p.name)?;
            Some(json!({
                "name": p.name,
                "title": policy.title,
                "summary": p.summary,
                "hash": policy.hash(),
                "rules": policy.rules,
            }))
        })
        .collect();
    Json(json!({ "policies": policies }))
}
