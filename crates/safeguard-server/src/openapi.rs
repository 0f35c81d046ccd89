//! `GET /openapi.json`: a hand-written OpenAPI 3.1 document of the routes.

use axum::Json;
use serde_json::{json, Value};

use crate::error::ErrorCode;

/// Every route the document lists, as `(method, path)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/moderate"),
    ("post", "/v1/moderations"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/policies"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The handler.
pub async fn handler() -> Json<Value> {
    Json(document())
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn json_body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn errors() -> Value {
    json!({
        "400": error_response("Invalid request, JSON, image or policy"),
        "401": error_response("Missing or wrong API key"),
        "413": error_response("Body or policy too large"),
        "415": error_response("Unsupported content type"),
        "422": error_response("The model's output held no verdict"),
        "429": error_response("Rate limited or queue full (see Retry-After)"),
        "500": error_response("The guard failed"),
        "504": error_response("Request timeout"),
    })
}

/// The document.
pub fn document() -> Value {
    let mut responses_moderate = errors();
    responses_moderate["200"] = json!({
        "description": "One result, or {results: [...]} for a batch",
        "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/ModerateResult"},
            {"type": "object", "properties": {"results": {"type": "array", "items": {"oneOf": [
                {"$ref": "#/components/schemas/ModerateResult"},
                {"$ref": "#/components/schemas/Error"}]}}}}
        ]}}}
    });
    let mut responses_moderations = errors();
    responses_moderations["200"] = ok("ModerationsResponse");
    let mut responses_chat = errors();
    responses_chat["200"] =
        json!({"description": "An OpenAI chat completion (or an SSE stream with stream=true)"});
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "SafeGuard moderation API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Policy-adaptive image guard. Every route but /healthz and /readyz needs `Authorization: Bearer KEY` when the server has keys."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": codes},
                        "message": {"type": "string"}}}}},
                "Policy": {"description": "A preset name (L1-L5, openai, llavaguard, unsafebench), raw policy text, or an object",
                    "oneOf": [
                        {"type": "string"},
                        {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "maxLength": 65536}}},
                        {"type": "object", "required": ["markdown"], "properties": {"markdown": {"type": "string"}}},
                        {"type": "object", "required": ["toml"], "properties": {"toml": {"type": "string"}}},
                        {"type": "object", "required": ["preset"], "properties": {
                            "preset": {"type": "string"},
                            "allow": {"type": "array", "items": {"type": "string"}},
                            "prohibit": {"type": "array", "items": {"type": "string"}}}},
                        {"type": "object", "required": ["rules"], "properties": {
                            "name": {"type": "string"}, "title": {"type": "string"},
                            "description": {"type": "string"},
                            "exceptions": {"type": "array", "items": {"type": "string"}},
                            "rules": {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}}}}
                    ]},
                "Rule": {"type": "object", "required": ["id", "title", "stance"], "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"},
                    "stance": {"type": "string", "enum": ["prohibited", "allowed"]},
                    "description": {"type": "string"}}},
                "ModerateRequest": {"type": "object", "required": ["policy"], "properties": {
                    "image": {"type": "string", "description": "base64 or data: URL"},
                    "images": {"type": "array", "items": {"type": "string"}},
                    "policy": {"$ref": "#/components/schemas/Policy"},
                    "mode": {"type": "string", "enum": ["score", "reason", "json"], "default": "score"},
                    "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5}}},
                "ModerateMultipart": {"type": "object", "required": ["image", "policy"], "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "policy": {"type": "string"},
                    "mode": {"type": "string"},
                    "threshold": {"type": "string"}}},
                "ModerateResult": {"type": "object", "required": ["verdict", "p_unsafe", "rules_hit", "rules", "policy_hash", "model", "latency_ms", "backend"], "properties": {
                    "verdict": {"type": "string", "enum": ["safe", "unsafe", "unassessed"]},
                    "p_unsafe": {"type": ["number", "null"]},
                    "rules_hit": {"type": "array", "items": {"type": "string"}},
                    "rules": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "stance": {"type": "string"},
                        "status": {"type": "string", "enum": ["hit", "clear", "unassessed"]},
                        "score": {"type": "number"}}}},
                    "rationale": {"type": "string"},
                    "note": {"type": "string"},
                    "policy_hash": {"type": "string"},
                    "model": {"type": "string"},
                    "latency_ms": {"type": "number"},
                    "backend": {"type": "string"}}},
                "ModerationsRequest": {"type": "object", "required": ["input"], "properties": {
                    "model": {"type": "string"},
                    "input": {"oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"oneOf": [
                            {"type": "string"},
                            {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
                            {"type": "object", "properties": {"type": {"const": "image_url"}, "image_url": {"type": "object", "properties": {"url": {"type": "string"}}}}}
                        ]}}]},
                    "policy": {"$ref": "#/components/schemas/Policy"},
                    "threshold": {"type": "number"}}},
                "ModerationsResponse": {"type": "object", "properties": {
                    "id": {"type": "string"}, "model": {"type": "string"},
                    "results": {"type": "array", "items": {"type": "object", "properties": {
                        "flagged": {"type": "boolean"},
                        "categories": {"type": "object", "additionalProperties": {"type": "boolean"}},
                        "category_scores": {"type": "object", "additionalProperties": {"type": "number"}},
                        "category_applied_input_types": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                        "safeguard": {"type": "object"}}}}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/moderate": {"post": {
                "summary": "Judge one image (or a batch) under a policy",
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ModerateRequest"}},
                    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/ModerateMultipart"}}}},
                "responses": responses_moderate}},
            "/v1/moderations": {"post": {
                "summary": "OpenAI-compatible moderation of image_url parts",
                "requestBody": json_body("ModerationsRequest"),
                "responses": responses_moderations}},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI-compatible chat completions on the loaded model",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": responses_chat}},
            "/v1/policies": {"get": {"summary": "Built-in policies and their rules",
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/healthz": {"get": {"summary": "Liveness: 200 while the process runs", "security": [],
                "responses": {"200": {"description": "OK"}}}},
            "/readyz": {"get": {"summary": "Readiness: 200 once the model is loaded and the batcher runs", "security": [],
                "responses": {"200": {"description": "Ready"}, "503": error_response("Not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1 document"}}}}
        }
    })
}
