//! P(unsafe) from the log-probabilities a server returns for the first answer token.
//!
//! The score is the softmax over the two answer words only: with `lu` and `ls` the
//! log-probabilities of `unsafe` and `safe`, `p_unsafe = e^lu / (e^lu + e^ls)`. Tokens are
//! matched after trimming whitespace, case-insensitively, so ` Unsafe` and `unsafe` both
//! count; several tokens that map to one word are added up (log-sum-exp). When only one
//! word is among the top logprobs, the other's log-probability is at most the smallest one
//! listed, which this module uses, so the score becomes a bound ([`Bound`]).

/// Which side of the true value a score lies on, when one word was missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `safe` was not listed: the true P(unsafe) is at least the score.
    Lower,
    /// `unsafe` was not listed: the true P(unsafe) is at most the score.
    Upper,
}

/// A score read from logprobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogprobScore {
    /// P(unsafe) in [0, 1], renormalised over the two answer words.
    pub p_unsafe: f64,
    /// `None` when both words were listed; otherwise which bound `p_unsafe` is.
    pub bound: Option<Bound>,
    /// The log-probability used for the missing word (the smallest one listed), if any.
    pub assumed_logprob: Option<f64>,
}

impl LogprobScore {
    /// A sentence for the judgement's note when the score is only a bound.
    pub fn note(&self) -> Option<String> {
        let (missing, side) = match self.bound? {
            Bound::Lower => ("safe", "lower"),
            Bound::Upper => ("unsafe", "upper"),
        };
        Some(format!(
            "\"{missing}\" was not among the top logprobs of the answer token; its logprob was taken as the smallest listed ({:.3}), so p_unsafe is an {side} bound",
            self.assumed_logprob.unwrap_or(f64::NEG_INFINITY)
        ))
    }
}

/// Scores the first answer position from its candidate tokens (`(token, logprob)` with
/// natural-log probabilities, each token listed once). `None` when neither `safe` nor
/// `unsafe` is among them, or no logprob is finite.
pub fn score_from_logprobs<'a, I>(candidates: I) -> Option<LogprobScore>
where
    I: IntoIterator<Item = (&'a str, f64)>,
{
    let mut unsafe_lps = Vec::new();
    let mut safe_lps = Vec::new();
    let mut smallest = f64::INFINITY;
    for (token, logprob) in candidates {
        if !logprob.is_finite() {
            continue;
        }
        smallest = smallest.min(logprob);
        let word = token.trim().to_lowercase();
        match word.as_str() {
            "unsafe" => unsafe_lps.push(logprob),
            "safe" => safe_lps.push(logprob),
            _ => {}
        }
    }
    let lu = log_sum_exp(&unsafe_lps);
    let ls = log_sum_exp(&safe_lps);
    let (lu, ls, bound) = match (lu, ls) {
        (Some(lu), Some(ls)) => (lu, ls, None),
        (Some(lu), None) => (lu, smallest, Some(Bound::Lower)),
        (None, Some(ls)) => (smallest, ls, Some(Bound::Upper)),
        (None, None) => return None,
    };
    Some(LogprobScore {
        p_unsafe: two_way_softmax(lu, ls),
        bound,
        assumed_logprob: bound.map(|_| smallest),
    })
}

/// `e^a / (e^a + e^b)`, without overflow.
pub fn two_way_softmax(a: f64, b: f64) -> f64 {
    let d = b - a;
    if d > 0.0 {
        let e = (-d).exp();
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + d.exp())
    }
}

/// `ln Σ e^x`, `None` for no values.
pub fn log_sum_exp(values: &[f64]) -> Option<f64> {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return None;
    }
    Some(max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn both_words_give_the_renormalised_probability() {
        let s = score_from_logprobs([("unsafe", (0.6f64).ln()), ("safe", (0.2f64).ln())]).unwrap();
        assert!(close(s.p_unsafe, 0.75), "{s:?}");
        assert_eq!(s.bound, None);
        assert_eq!(s.note(), None);
    }

    #[test]
    fn variants_of_one_word_are_added() {
        // 0.3 + 0.1 unsafe, 0.4 safe, 0.2 elsewhere.
        let s = score_from_logprobs([
            ("unsafe", (0.3f64).ln()),
            (" Unsafe", (0.1f64).ln()),
            ("safe", (0.4f64).ln()),
            ("The", (0.2f64).ln()),
        ])
        .unwrap();
        assert!(close(s.p_unsafe, 0.5), "{s:?}");
    }

    #[test]
    fn a_missing_word_takes_the_smallest_logprob_and_is_a_bound() {
        let s = score_from_logprobs([("unsafe", -0.1), ("The", -3.0), ("I", -5.0)]).unwrap();
        assert_eq!(s.bound, Some(Bound::Lower));
        assert!(close(s.p_unsafe, two_way_softmax(-0.1, -5.0)));
        assert!(s.note().unwrap().contains("lower bound"));
        let s = score_from_logprobs([("safe", -0.1), ("I", -4.0)]).unwrap();
        assert_eq!(s.bound, Some(Bound::Upper));
        assert!(close(s.p_unsafe, two_way_softmax(-4.0, -0.1)));
        assert!(s.note().unwrap().contains("\"unsafe\""));
    }

    #[test]
    fn neither_word_gives_no_score() {
        assert_eq!(score_from_logprobs([("The", -0.1), ("un", -1.0)]), None);
        assert_eq!(score_from_logprobs([]), None);
    }

    #[test]
    fn softmax_stays_finite_at_extremes() {
        assert!(close(two_way_softmax(0.0, -9999.0), 1.0));
        assert!(close(two_way_softmax(-9999.0, 0.0), 0.0));
        assert!(close(two_way_softmax(-1.0, -1.0), 0.5));
    }
}
