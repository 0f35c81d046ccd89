//! The [`Guard`] trait: what every backend (local VLM, remote endpoint, embedded lite model)
//! implements, and what the CLI, evaluation harness and server call.
//!
//! A guard receives [`GuardRequest`]s (encoded image bytes, a policy, an output format, a
//! threshold) in batches and returns one [`Judgement`] or one error per request. A judgement
//! is [`Assessment::Unassessed`] when the backend could not judge every prohibited rule and
//! found no violation: a guard never answers a silent *safe*.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::policy::{Policy, Stance};
use crate::prompt::Format;
use crate::verdict::{OnUnparsable, Verdict};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assessment {
    /// Judged safe under the policy.
    Safe,
    /// Judged unsafe under the policy.
    Unsafe,
    /// The backend could not judge the image against the whole policy.
    Unassessed,
}

impl Assessment {
    /// The verdict, when there is one.
    pub fn verdict(self) -> Option<Verdict> {
        match self {
            Assessment::Safe => Some(Verdict::Safe),
            Assessment::Unsafe => Some(Verdict::Unsafe),
            Assessment::Unassessed => None,
        }
    }
}

impl From<Verdict> for Assessment {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Safe => Assessment::Safe,
            Verdict::Unsafe => Assessment::Unsafe,
        }
    }
}

impl fmt::Display for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Assessment::Safe => "safe",
            Assessment::Unsafe => "unsafe",
            Assessment::Unassessed => "unassessed",
        })
    }
}

/// How one rule of the policy fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleStatus {
    /// The image shows what the rule describes.
    Hit,
    /// The image does not show it.
    Clear,
    /// The backend cannot judge this rule.
    Unassessed,
}

/// One rule's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleResult {
    /// The rule's id.
    pub id: String,
    /// Whether the policy prohibits or allows it.
    pub stance: Stance,
    /// What the backend found.
    pub status: RuleStatus,
    /// The backend's score for the rule, in [0, 1], when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// A guard's answer for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// Safe, unsafe or unassessed.
    pub verdict: Assessment,
    /// Probability of unsafe, in [0, 1], when the backend scores.
    pub p_unsafe: Option<f64>,
    /// Ids of the prohibited rules the image breaks.
    pub rules_hit: Vec<String>,
    /// Every rule the backend looked at, with its status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleResult>,
    /// The model's explanation, in reasoning or JSON mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// The raw model output, when the backend generates text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<String>,
    /// What the user should know about how this verdict was reached (e.g. which rules the
    /// backend could not judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The backend that produced the judgement.
    pub backend: String,
    /// Wall time spent on this request, in milliseconds.
    pub latency_ms: f64,
}

/// One image to check under one policy.
#[derive(Debug, Clone, Copy)]
pub struct GuardRequest<'a> {
    /// The encoded image (JPEG, PNG, …), as received.
    pub image: &'a [u8],
    /// The policy to enforce.
    pub policy: &'a Policy,
    /// How the model should answer (`verdict` = score mode; `reasoning`/`json` = generate).
    pub format: Format,
    /// `p_unsafe` at or above which the image is unsafe.
    pub threshold: f64,
}

/// A backend that judges images under policies.
pub trait Guard: Send + Sync {
    /// Short name shown in outputs (`lite`, `local`, `remote`).
    fn name(&self) -> &str;

    /// Judges a batch; the result has one entry per request, in order.
    fn judge(&self, requests: &[GuardRequest<'_>]) -> Vec<Result<Judgement, Error>>;
}

/// Turns a judgement that carries a non-finite or out-of-range number (`p_unsafe`, a rule
/// score) into [`Error::NonFinite`]: a NaN compares false with every threshold, so left alone
/// it would read as *safe*. Errors pass through.
pub fn check_finite(result: Result<Judgement, Error>) -> Result<Judgement, Error> {
    let judgement = result?;
    let bad = |what: String, value: f64| Error::NonFinite {
        backend: judgement.backend.clone(),
        what,
        value: value.to_string(),
    };
    if let Some(p) = judgement.p_unsafe {
        if !(0.0..=1.0).contains(&p) {
            return Err(bad("p_unsafe".into(), p));
        }
    }
    for rule in &judgement.rules {
        if let Some(score) = rule.score.filter(|s| !(0.0..=1.0).contains(s)) {
            return Err(bad(format!("the score of rule {}", rule.id), score));
        }
    }
    Ok(judgement)
}

/// [`Guard::judge`] with every result passed through [`check_finite`]: what every caller
/// (CLI, evaluation, server) uses, so that no backend, however it computes its numbers, can
/// turn a NaN into a verdict.
pub fn judge_checked<G: Guard + ?Sized>(
    guard: &G,
    requests: &[GuardRequest<'_>],
) -> Vec<Result<Judgement, Error>> {
    guard
        .judge(requests)
        .into_iter()
        .map(check_finite)
        .collect()
}

/// Whether a rule is about sexual content or nudity, judging by its id, title and
/// description. Rules about minors are excluded: no image classifier can tell age reliably.
pub fn is_nudity_rule(id: &str, title: &str, description: &str) -> bool {
    let text = format!("{id} {title}").to_lowercase();
    let description = description.to_lowercase();
    let about_minors = ["minor", "child", "under 18", "underage"]
        .iter()
        .any(|w| text.contains(w) || description.contains(w));
    let nudity = [
        "sexual",
        "nudity",
        "nude",
        "explicit",
        "porn",
        "erotic",
        "revealing",
    ]
    .iter()
    .any(|w| text.contains(w));
    nudity && !about_minors
}

/// Applies the caller's fallback to a backend result: an [`Error::Unparsable`] becomes a
/// judgement of the chosen verdict (with the raw output kept and a note saying it was a
/// fallback) unless `on` is [`OnUnparsable::Error`]; everything else passes through.
pub fn apply_on_unparsable(
    result: Result<Judgement, Error>,
    on: OnUnparsable,
) -> Result<Judgement, Error> {
    let verdict = match on {
        OnUnparsable::Safe => Assessment::Safe,
        OnUnparsable::Unsafe => Assessment::Unsafe,
        OnUnparsable::Error => return result,
    };
    match result {
        Err(Error::Unparsable {
            backend,
            reason,
            output,
        }) => Ok(Judgement {
            verdict,
            p_unsafe: None,
            rules_hit: Vec::new(),
            rules: Vec::new(),
            rationale: None,
            raw_output: Some(output),
            note: Some(format!(
                "no verdict in the model output ({reason}); counted as {verdict} by --on-unparsable"
            )),
            backend,
            latency_ms: 0.0,
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::NoVerdict;

    fn judgement(p: Option<f64>, rule_score: Option<f64>) -> Judgement {
        Judgement {
            verdict: Assessment::Safe,
            p_unsafe: p,
            rules_hit: Vec::new(),
            rules: vec![RuleResult {
                id: "O1".into(),
                stance: Stance::Prohibited,
                status: RuleStatus::Clear,
                score: rule_score,
            }],
            rationale: None,
            raw_output: None,
            note: None,
            backend: "test".into(),
            latency_ms: 0.0,
        }
    }

    #[test]
    fn non_finite_numbers_never_pass_as_a_verdict() {
        assert!(check_finite(Ok(judgement(Some(0.2), Some(0.1)))).is_ok());
        assert!(check_finite(Ok(judgement(None, None))).is_ok());
        for (p, s) in [
            (Some(f64::NAN), Some(0.1)),
            (Some(f64::INFINITY), None),
            (Some(1.5), None),
            (Some(0.1), Some(f64::NAN)),
            (Some(0.1), Some(f64::NEG_INFINITY)),
        ] {
            match check_finite(Ok(judgement(p, s))) {
                Err(Error::NonFinite { backend, .. }) => assert_eq!(backend, "test"),
                other => panic!("{p:?}/{s:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unparsable_output_falls_back_only_when_asked() {
        let unparsable = || {
            Err(Error::Unparsable {
                backend: "local".into(),
                reason: NoVerdict::Empty,
                output: "???".into(),
            })
        };
        let j = apply_on_unparsable(unparsable(), OnUnparsable::Unsafe).unwrap();
        assert_eq!(j.verdict, Assessment::Unsafe);
        assert_eq!(j.raw_output.as_deref(), Some("???"));
        assert!(j.note.unwrap().contains("--on-unparsable"));
        assert_eq!(
            apply_on_unparsable(unparsable(), OnUnparsable::Safe)
                .unwrap()
                .verdict,
            Assessment::Safe
        );
        assert!(apply_on_unparsable(unparsable(), OnUnparsable::Error).is_err());
        let other = Err(Error::InvalidImage {
            message: "bad".into(),
        });
        assert!(apply_on_unparsable(other, OnUnparsable::Safe).is_err());
    }
}
