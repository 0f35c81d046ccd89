//! [`LiteGuard`]: the open_nsfw score applied to a policy's sexual/nudity rules.

use std::time::Instant;

use safeguard_core::guard::{
    is_nudity_rule, Guard, GuardRequest, Judgement, RuleResult, RuleStatus,
};
use safeguard_core::{Assessment, Error, Policy, Stance};
use safeguard_vision::{decode_image, DecodeLimits};

use crate::model::OpenNsfw;

/// Backend name shown in outputs.
pub const NAME: &str = "lite";

/// The embedded lite guard. See the crate docs for what it can and cannot judge.
#[derive(Debug)]
pub struct LiteGuard {
    model: OpenNsfw,
    limits: DecodeLimits,
}

impl LiteGuard {
    /// Loads the embedded model; images are decoded within `limits`.
    pub fn new(limits: DecodeLimits) -> Result<Self, crate::LiteError> {
        Ok(LiteGuard {
            model: OpenNsfw::embedded()?,
            limits,
        })
    }

    fn judge_one(&self, request: &GuardRequest<'_>) -> Result<Judgement, Error> {
        let start = Instant::now();
        let image = decode_image(request.image, &self.limits).map_err(|e| Error::InvalidImage {
            message: e.to_string(),
        })?;
        let nsfw = self.model.score(&image).map_err(|e| Error::Backend {
            backend: NAME.to_string(),
            message: e.to_string(),
        })?;
        let mut judgement = evaluate(request.policy, f64::from(nsfw), request.threshold);
        judgement.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        Ok(judgement)
    }
}

impl Guard for LiteGuard {
    fn name(&self) -> &str {
        NAME
    }

    fn judge(&self, requests: &[GuardRequest<'_>]) -> Vec<Result<Judgement, Error>> {
        requests
            .iter()
            .map(|r| safeguard_core::guard::check_finite(self.judge_one(r)))
            .collect()
    }
}

/// Applies an open_nsfw score to a policy.
///
/// Nudity rules are *hit* when `nsfw >= threshold`, else *clear*; every other rule is
/// *unassessed*. The verdict is *unsafe* when a prohibited rule is hit, *safe* when every
/// prohibited rule was judged clear, and *unassessed* otherwise (including free-text
/// policies without rules). `p_unsafe` is the nsfw score when there is a verdict.
pub fn evaluate(policy: &Policy, nsfw: f64, threshold: f64) -> Judgement {
    let rules: Vec<RuleResult> = policy
        .rules
        .iter()
        .map(|rule| {
            let judged = is_nudity_rule(&rule.id, &rule.title, &rule.description);
            RuleResult {
                id: rule.id.clone(),
                stance: rule.stance,
                status: match (judged, nsfw >= threshold) {
                    (false, _) => RuleStatus::Unassessed,
                    (true, true) => RuleStatus::Hit,
                    (true, false) => RuleStatus::Clear,
                },
                score: judged.then_some(nsfw),
            }
        })
        .collect();
    let prohibited = || rules.iter().filter(|r| r.stance == Stance::Prohibited);
    let rules_hit: Vec<String> = prohibited()
        .filter(|r| r.status == RuleStatus::Hit)
        .map(|r| r.id.clone())
        .collect();
    let not_judged: Vec<&str> = prohibited()
        .filter(|r| r.status == RuleStatus::Unassessed)
        .map(|r| r.id.as_str())
        .collect();
    let verdict = if !rules_hit.is_empty() {
        Assessment::Unsafe
    } else if not_judged.is_empty() && prohibited().next().is_some() {
        Assessment::Safe
    } else {
        Assessment::Unassessed
    };
    let note = if policy.rules.is_empty() {
        Some(format!(
            "the lite backend (open_nsfw, nsfw score {nsfw:.3}) judges only sexual/nudity rules, and this policy is free text without rules; use a VLM backend (--model) to judge it"
        ))
    } else if prohibited().all(|r| r.status == RuleStatus::Unassessed) {
        Some(format!(
            "the lite backend (open_nsfw, nsfw score {nsfw:.3}) judges only sexual/nudity rules, and this policy prohibits none; not judged: {}",
            not_judged.join(", ")
        ))
    } else if !not_judged.is_empty() {
        Some(format!(
            "the lite backend (open_nsfw) judges only sexual/nudity rules; not judged: {}",
            not_judged.join(", ")
        ))
    } else {
        None
    };
    Judgement {
        verdict,
        p_unsafe: verdict.verdict().map(|_| nsfw),
        rules_hit,
        rules,
        rationale: None,
        raw_output: None,
        note,
        backend: NAME.to_string(),
        latency_ms: 0.0,
    }
}
