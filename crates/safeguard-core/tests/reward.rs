use proptest::prelude::*;
use safeguard_core::reward::{AccuracyReward, PaperReward};
use safeguard_core::verdict::Dialect;
use safeguard_core::Reward;
use safeguard_core::Verdict::{Safe, Unsafe};

/// A think block of exactly `n` characters.
fn think(n: usize) -> String {
    format!("<think>{}</think>", "x".repeat(n))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn format_term() {
    let ok = format!("{}\n<answer>yes</answer>", think(60));
    assert_eq!(PaperReward::format_score(&ok), 1.0);
    assert_eq!(
        PaperReward::format_score("<think>\nmulti\nline\n</think><answer>no</answer>"),
        1.0
    );
    assert_eq!(PaperReward::format_score(&format!("{ok} trailing")), 0.0);
    assert_eq!(PaperReward::format_score(&format!("lead {ok}")), 0.0);
    assert_eq!(PaperReward::format_score("<answer>yes</answer>"), 0.0);
    assert_eq!(PaperReward::format_score("<think>x</think>"), 0.0);
}

/// Every row of the paper's accuracy table (REFERENCE.md), with the format term added.
#[test]
fn paper_reward_table() {
    let long = think(50);
    let short = think(49);
    let cases: Vec<(String, _, f64)> = vec![
        // correct, long think: 1.7 (safe) / 2.0 (unsafe), + format 1
        (format!("{long}<answer>yes</answer>"), Safe, 1.0 + 1.7),
        (format!("{long}<answer>no</answer>"), Unsafe, 1.0 + 2.0),
        // correct, think shorter than 50 characters: minus 0.5
        (format!("{short}<answer>yes</answer>"), Safe, 1.0 + 1.2),
        (format!("{short}<answer>no</answer>"), Unsafe, 1.0 + 1.5),
        // correct without any think block: minus 0.5, and no format point
        ("<answer>no</answer>".to_string(), Unsafe, 1.5),
        ("<answer>yes</answer>".to_string(), Safe, 1.2),
        // wrong with a think block: 1.0
        (format!("{long}<answer>yes</answer>"), Unsafe, 1.0 + 1.0),
        (format!("{short}<answer>no</answer>"), Safe, 1.0 + 1.0),
        // wrong without a think block: 0.5
        ("<answer>yes</answer>".to_string(), Unsafe, 0.5),
        // no valid answer, think block: 0.5
        (format!("{long}<answer>maybe</answer>"), Safe, 1.0 + 0.5),
        (long.clone(), Unsafe, 0.5),
        // no valid answer, no think block: 0
        ("unsafe".to_string(), Unsafe, 0.0),
        (String::new(), Safe, 0.0),
    ];
    for (completion, truth, want) in cases {
        let got = PaperReward.score(&completion, truth);
        assert!(
            close(got, want),
            "{completion:?} truth {truth}: got {got}, want {want}"
        );
    }
}

#[test]
fn think_length_counts_trimmed_characters() {
    // 49 visible characters padded with whitespace are still short.
    let padded = format!("<think>  {}  </think><answer>no</answer>", "é".repeat(49));
    assert!(close(PaperReward::accuracy_score(&padded, Unsafe), 1.5));
    let long = format!("<think>{}</think><answer>no</answer>", "é".repeat(50));
    assert!(close(PaperReward::accuracy_score(&long, Unsafe), 2.0));
}

#[test]
fn answer_case_and_whitespace_do_not_matter() {
    let text = format!("{}<answer> YES\n</answer>", think(80));
    assert!(close(PaperReward.score(&text, Safe), 2.7));
}

#[test]
fn accuracy_reward_is_zero_or_one() {
    let reward = AccuracyReward {
        dialect: Dialect::Verdict,
    };
    assert_eq!(reward.score("unsafe", Unsafe), 1.0);
    assert_eq!(reward.score("safe", Unsafe), 0.0);
    assert_eq!(reward.score("no idea", Safe), 0.0);
    let reasoning = AccuracyReward {
        dialect: Dialect::Reasoning,
    };
    assert_eq!(
        reasoning.score("<think>a</think><answer>yes</answer>", Safe),
        1.0
    );
    assert_eq!(reward.name(), "accuracy");
    assert_eq!(PaperReward.name(), "paper");
}

proptest! {
    #[test]
    fn paper_reward_stays_in_range(text in any::<String>(), unsafe_ in any::<bool>()) {
        let truth = if unsafe_ { Unsafe } else { Safe };
        let r = PaperReward.score(&text, truth);
        prop_assert!((0.0..=3.0).contains(&r));
        let a = PaperReward::accuracy_score(&text, truth);
        prop_assert!((0.0..=2.0).contains(&a));
    }
}
