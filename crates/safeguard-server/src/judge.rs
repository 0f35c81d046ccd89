//! Submitting images to the batcher and awaiting their judgements; `--on-error unsafe`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use safeguard_core::guard::{apply_on_unparsable, Assessment};
use safeguard_core::verdict::OnUnparsable;
use safeguard_core::{Error as CoreError, Format, Judgement, Policy};
use tokio::sync::oneshot;

use crate::error::{ApiError, ErrorCode};
use crate::state::{AppState, Job, OnError};

/// What every image of one request is judged under.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The policy.
    pub policy: Arc<Policy>,
    /// Its [`Policy::hash`].
    pub policy_hash: String,
    /// Score, reason or JSON.
    pub format: Format,
    /// `p_unsafe` at or above which the image is unsafe.
    pub threshold: f64,
}

impl Spec {
    /// The spec of `policy`.
    pub fn new(policy: Arc<Policy>, format: Format, threshold: f64) -> Self {
        let policy_hash = policy.hash();
        Self {
            policy,
            policy_hash,
            format,
            threshold,
        }
    }
}

/// Queues every image (all or none: a full queue fails the whole request with 429) and waits
/// for their judgements, in order. Guard failures are answered per image, or turned into
/// `unsafe` under `--on-error unsafe`.
pub async fn judge_images(
    state: &AppState,
    images: Vec<Vec<u8>>,
    spec: &Spec,
) -> Result<Vec<Result<Judgement, ApiError>>, ApiError> {
    let mut receivers = Vec::with_capacity(images.len());
    for image in images {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            image,
            policy: Arc::clone(&spec.policy),
            policy_hash: spec.policy_hash.clone(),
            format: spec.format,
            threshold: spec.threshold,
            reply,
        };
        state.counters.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = state.batcher.submit(job) {
            state.counters.queued.fetch_sub(1, Ordering::Relaxed);
            // Jobs already queued still run; their answers go nowhere.
            return Err(ApiError::from_scheduler(&e));
        }
        receivers.push(rx);
    }
    let mut out = Vec::with_capacity(receivers.len());
    for rx in receivers {
        let result = match rx.await {
            Ok(result) => result,
            Err(_) => Err(CoreError::Backend {
                backend: state.guard.name().to_string(),
                message: "the guard failed while judging this image's batch".into(),
            }),
        };
        out.push(settle(state, result));
    }
    Ok(out)
}

/// Applies `--on-error` to one guard result.
fn settle(state: &AppState, result: Result<Judgement, CoreError>) -> Result<Judgement, ApiError> {
    match (result, state.config.on_error) {
        (Ok(j), _) => Ok(j),
        // Client errors stay errors: the image itself is at fault.
        (Err(e @ CoreError::InvalidImage { .. }), _) => Err(ApiError::from_core(&e)),
        (Err(e), OnError::Error) => {
            let err = ApiError::from_core(&e);
            tracing::warn!(code = err.code.as_str(), "guard failed: {}", err.message);
            Err(err)
        }
        (Err(e), OnError::Unsafe) => {
            state.counters.fail_closed.fetch_add(1, Ordering::Relaxed);
            let code = ApiError::from_core(&e).code;
            tracing::warn!(
                code = code.as_str(),
                "guard failed; answering unsafe (--on-error unsafe)"
            );
            if matches!(e, CoreError::Unparsable { .. }) {
                if let Ok(mut j) = apply_on_unparsable(Err(e), OnUnparsable::Unsafe) {
                    j.note = Some(
                        "no verdict in the model output; answered unsafe by --on-error unsafe"
                            .into(),
                    );
                    return Ok(j);
                }
                return Err(ApiError::new(ErrorCode::Internal, "fallback failed"));
            }
            Ok(Judgement {
                verdict: Assessment::Unsafe,
                p_unsafe: None,
                rules_hit: Vec::new(),
                rules: Vec::new(),
                rationale: None,
                raw_output: None,
                note: Some(format!(
                    "the guard failed ({}); answered unsafe by --on-error unsafe",
                    code.as_str()
                )),
                backend: state.guard.name().to_string(),
                latency_ms: 0.0,
            })
        }
    }
}
