//! Rewards for GRPO: how good one completion is, given the true verdict.
//!
//! [`PaperReward`] reproduces the public SafeGuard-VL reward plugin (REFERENCE.md): the sum
//! of a format term and an accuracy term. [`AccuracyReward`] is a plain 0/1 reward for
//! ablations and for models trained on the one-word format.

use std::sync::OnceLock;

use regex::Regex;

use crate::verdict::{self, Dialect, Verdict};

/// Scores one completion against the true verdict. Higher is better.
pub trait Reward: Send + Sync {
    /// The reward for `completion` when the truth is `truth`.
    fn score(&self, completion: &str, truth: Verdict) -> f64;

    /// Short name for logs and run records.
    fn name(&self) -> &'static str;
}

/// Think blocks shorter than this (in characters, after trimming) lose
/// [`PaperReward::SHORT_THINK_PENALTY`] on a correct answer.
pub const MIN_THINK_CHARS: usize = 50;

/// The paper's public reward: format term + accuracy term.
///
/// - format: 1 if the whole completion matches `^<think>.*?</think>\s*<answer>.*?</answer>$`
///   (dot matches newline), else 0;
/// - accuracy, on the `<answer>` content (`yes` = safe, `no` = unsafe) and the first
///   `<think>` block:
///
/// | answer  | think block        | accuracy |
/// |---------|--------------------|----------|
/// | correct | ≥ 50 chars         | 1.7 (truth safe) / 2.0 (truth unsafe) |
/// | correct | < 50 chars / none  | the same − 0.5 |
/// | wrong   | present            | 1.0 |
/// | wrong   | none               | 0.5 |
/// | none    | present            | 0.5 |
/// | none    | none               | 0.0 |
///
/// clamped to [0, 2]. The total lies in [0, 3].
#[derive(Debug, Clone, Copy, Default)]
pub struct PaperReward;

impl PaperReward {
    /// Accuracy for a correct answer when the truth is safe.
    pub const CORRECT_SAFE: f64 = 1.7;
    /// Accuracy for a correct answer when the truth is unsafe.
    pub const CORRECT_UNSAFE: f64 = 2.0;
    /// Taken off a correct answer whose think block is short or missing.
    pub const SHORT_THINK_PENALTY: f64 = 0.5;
    /// Accuracy for a wrong answer with a think block.
    pub const WRONG_WITH_THINK: f64 = 1.0;
    /// Accuracy for a wrong answer without a think block.
    pub const WRONG_WITHOUT_THINK: f64 = 0.5;
    /// Accuracy when there is no valid answer but there is a think block.
    pub const NO_ANSWER_WITH_THINK: f64 = 0.5;

    /// The format term: 1 or 0.
    pub fn format_score(completion: &str) -> f64 {
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            Regex::new(r"(?s)^<think>.*?</think>\s*<answer>.*?</answer>$").expect("static regex")
        });
        if re.is_match(completion) {
            1.0
        } else {
            0.0
        }
    }

    /// The accuracy term, in [0, 2].
    pub fn accuracy_score(completion: &str, truth: Verdict) -> f64 {
        let think = verdict::think_block(completion);
        let answer = verdict::answer_block(completion).and_then(yes_no);
        let score = match (answer, think) {
            (Some(answer), think) if answer == truth => {
                let base = match truth {
                    Verdict::Safe => Self::CORRECT_SAFE,
                    Verdict::Unsafe => Self::CORRECT_UNSAFE,
                };
                let think_chars = think.map_or(0, |t| t.trim().chars().count());
                if think_chars < MIN_THINK_CHARS {
                    base - Self::SHORT_THINK_PENALTY
                } else {
                    base
                }
            }
            (Some(_), Some(_)) => Self::WRONG_WITH_THINK,
            (Some(_), None) => Self::WRONG_WITHOUT_THINK,
            (None, Some(_)) => Self::NO_ANSWER_WITH_THINK,
            (None, None) => 0.0,
        };
        score.clamp(0.0, 2.0)
    }
}

/// The paper's answers are exactly `yes` (safe) or `no` (unsafe), case and surrounding
/// whitespace aside.
fn yes_no(answer: &str) -> Option<Verdict> {
    match answer.trim().to_ascii_lowercase().as_str() {
        "yes" => Some(Verdict::Safe),
        "no" => Some(Verdict::Unsafe),
        _ => None,
    }
}

impl Reward for PaperReward {
    fn score(&self, completion: &str, truth: Verdict) -> f64 {
        Self::format_score(completion) + Self::accuracy_score(completion, truth)
    }

    fn name(&self) -> &'static str {
        "paper"
    }
}

/// 1 when the verdict read from the completion (in `dialect`) is right, else 0. An
/// unreadable completion scores 0.
#[derive(Debug, Clone, Copy)]
pub struct AccuracyReward {
    /// How to read the completion.
    pub dialect: Dialect,
}

impl Reward for AccuracyReward {
    fn score(&self, completion: &str, truth: Verdict) -> f64 {
        match verdict::parse(completion, self.dialect) {
            Ok(parsed) if parsed.verdict == truth => 1.0,
            _ => 0.0,
        }
    }

    fn name(&self) -> &'static str {
        "accuracy"
    }
}
