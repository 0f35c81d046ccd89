//! How an nsfw score becomes a verdict under a policy (no model needed).

use safeguard_core::guard::RuleStatus;
use safeguard_core::policy::presets;
use safeguard_core::{Assessment, Policy, Stance};
use safeguard_lite::evaluate;

#[test]
fn a_nudity_only_policy_gets_a_verdict() {
    let policy = Policy::from_markdown(
        "nudity-only",
        "## Prohibited\n### nudity: Nudity\nNo nude people.\n### sexual: Sexual content\nNo sex.\n",
    )
    .unwrap();
    let low = evaluate(&policy, 0.02, 0.5);
    assert_eq!(low.verdict, Assessment::Safe);
    assert_eq!(low.p_unsafe, Some(0.02));
    assert!(low.rules_hit.is_empty());
    assert!(low.note.is_none());
    let high = evaluate(&policy, 0.9, 0.5);
    assert_eq!(high.verdict, Assessment::Unsafe);
    assert_eq!(high.rules_hit, ["nudity", "sexual"]);
    // The threshold is inclusive.
    assert_eq!(evaluate(&policy, 0.5, 0.5).verdict, Assessment::Unsafe);
}

#[test]
fn other_rules_leave_a_clean_image_unassessed() {
    let policy = presets::get("L3").unwrap();
    let j = evaluate(&policy, 0.01, 0.5);
    assert_eq!(j.verdict, Assessment::Unassessed, "never a silent safe");
    assert_eq!(j.p_unsafe, None);
    let note = j.note.unwrap();
    assert!(
        note.contains("violence-graphic") && note.contains("hate"),
        "{note}"
    );
    let sexual = j.rules.iter().find(|r| r.id == "sexual").unwrap();
    assert_eq!(
        (sexual.status, sexual.score),
        (RuleStatus::Clear, Some(0.01))
    );
    let hate = j.rules.iter().find(|r| r.id == "hate").unwrap();
    assert_eq!((hate.status, hate.score), (RuleStatus::Unassessed, None));
}

#[test]
fn a_hit_is_unsafe_even_with_unjudged_rules() {
    let j = evaluate(&presets::get("L4").unwrap(), 0.97, 0.5);
    assert_eq!(j.verdict, Assessment::Unsafe);
    assert_eq!(j.rules_hit, ["nudity"]);
    assert_eq!(j.p_unsafe, Some(0.97));
}

#[test]
fn allowed_nudity_is_not_a_violation() {
    let mut policy = presets::get("llavaguard").unwrap();
    policy.set_stance("O3", Stance::Allowed).unwrap();
    policy.set_stance("O4", Stance::Allowed).unwrap();
    let j = evaluate(&policy, 0.99, 0.5);
    assert!(j.rules_hit.is_empty());
    assert_eq!(j.verdict, Assessment::Unassessed);
    let o4 = j.rules.iter().find(|r| r.id == "O4").unwrap();
    assert_eq!((o4.stance, o4.status), (Stance::Allowed, RuleStatus::Hit));
}

#[test]
fn minors_rules_are_never_judged_by_the_classifier() {
    let policy = presets::get("openai").unwrap();
    let j = evaluate(&policy, 0.01, 0.5);
    let minors = j.rules.iter().find(|r| r.id == "sexual/minors").unwrap();
    assert_eq!(minors.status, RuleStatus::Unassessed);
    let sexual = j.rules.iter().find(|r| r.id == "sexual").unwrap();
    assert_eq!(sexual.status, RuleStatus::Clear);
}

#[test]
fn free_text_policies_are_unassessed_with_a_reason() {
    let policy = Policy::from_text("custom", "No pictures of spiders.").unwrap();
    let j = evaluate(&policy, 0.9, 0.5);
    assert_eq!(j.verdict, Assessment::Unassessed);
    assert!(j.note.unwrap().contains("free text"));
}

#[test]
fn a_nan_score_is_an_error_never_safe() {
    let policy = Policy::from_markdown(
        "nudity-only",
        "## Prohibited\n### nudity: Nudity\nNo nude people.\n",
    )
    .unwrap();
    for nsfw in [f64::NAN, f64::INFINITY] {
        // Left alone, NaN compares false with the threshold and reads as safe.
        let judged = safeguard_core::guard::check_finite(Ok(evaluate(&policy, nsfw, 0.5)));
        assert!(
            matches!(judged, Err(safeguard_core::Error::NonFinite { .. })),
            "{nsfw}: {judged:?}"
        );
    }
}
