//! The numbers both renderers print, gathered once: the runs × policies score table (the
//! paper's Table 6 layout) and the policy order.

use std::cmp::Ordering;

use super::run::Run;

/// One of our runs in the score table. Scores are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    /// Run name.
    pub name: String,
    /// Score under each policy of [`ScoreTable::policies`] (F1, or accuracy for a policy with
    /// no unsafe label); `None` when the run has no assessed item under it.
    pub scores: Vec<Option<f64>>,
    /// Mean of the run's per-policy scores.
    pub macro_score: f64,
    /// F1 over all the run's assessed rows.
    pub pooled_f1: f64,
    /// Accuracy over all the run's assessed rows.
    pub pooled_accuracy: f64,
    /// Assessed rows.
    pub n: u64,
}

/// Runs × policies.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreTable {
    /// Every policy of any run, in natural order (L1, L2, …, L10).
    pub policies: Vec<String>,
    /// One row per run, in the order given.
    pub rows: Vec<ScoreRow>,
}

impl ScoreTable {
    /// Gathers the scores of `runs` from their metrics.
    pub fn of(runs: &[Run]) -> Self {
        let mut policies: Vec<String> = runs
            .iter()
            .flat_map(|r| r.metrics.per_policy.keys().cloned())
            .collect();
        policies.sort_by(|a, b| natural_cmp(a, b));
        policies.dedup();
        let rows = runs
            .iter()
            .map(|run| ScoreRow {
                name: run.name(),
                scores: policies
                    .iter()
                    .map(|p| run.metrics.per_policy.get(p).map(|m| m.score))
                    .collect(),
                macro_score: run.metrics.macro_score,
                pooled_f1: run.metrics.pooled.f1,
                pooled_accuracy: run.metrics.pooled.accuracy,
                n: run.metrics.pooled.n,
            })
            .collect();
        ScoreTable { policies, rows }
    }

    /// Index of the best value of each column (scores, macro, pooled F1, pooled accuracy)
    /// among our rows, to highlight; `None` for a column with fewer than two values.
    pub fn best(&self) -> Vec<Option<usize>> {
        let mut columns: Vec<Vec<Option<f64>>> = (0..self.policies.len())
            .map(|p| self.rows.iter().map(|r| r.scores[p]).collect())
            .collect();
        columns.push(self.rows.iter().map(|r| Some(r.macro_score)).collect());
        columns.push(self.rows.iter().map(|r| Some(r.pooled_f1)).collect());
        columns.push(self.rows.iter().map(|r| Some(r.pooled_accuracy)).collect());
        columns
            .iter()
            .map(|col| {
                if col.iter().flatten().count() < 2 {
                    return None;
                }
                col.iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (i, v)))
                    .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                    .map(|(i, _)| i)
            })
            .collect()
    }
}

/// Compares names with digit runs as numbers: `L2 < L10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn key(s: &str) -> Vec<(String, u64)> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() {
                let mut digits = c.to_string();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                parts.push((
                    std::mem::take(&mut text),
                    digits.parse().unwrap_or(u64::MAX),
                ));
            } else {
                text.push(c);
            }
        }
        parts.push((text, 0));
        parts
    }
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// A fraction as a percentage with two decimals, as the paper prints its tables.
pub fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// A quoted percentage, printed as the paper printed it (trailing zeros kept to two places).
pub fn quoted(x: f64) -> String {
    format!("{x:.2}")
}

/// An RFC 3339 time shortened to `YYYY-MM-DD HH:MM` (UTC offset kept when not `Z`); anything
/// else is returned unchanged.
pub fn short_time(t: &str) -> String {
    let b = t.as_bytes();
    if b.len() >= 16 && b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b' ') {
        let zone = t
            .get(19..)
            .map(|rest| rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit()))
            .filter(|z| !z.is_empty() && *z != "Z")
            .map(|z| format!(" {z}"))
            .unwrap_or_else(|| {
                if t.ends_with('Z') {
                    " UTC".into()
                } else {
                    String::new()
                }
            });
        format!("{} {}{}", &t[..10], &t[11..16], zone)
    } else {
        t.to_string()
    }
}

/// Seconds as `1h 02m`, `3m 05s` or `12.3 s`.
pub fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_puts_l10_after_l2() {
        let mut v = vec!["L10", "L2", "L1", "openai", "L5"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["L1", "L2", "L5", "L10", "openai"]);
    }

    #[test]
    fn times_and_durations_are_short() {
        assert_eq!(short_time("2025-03-04T05:06:07Z"), "2025-03-04 05:06 UTC");
        assert_eq!(
            short_time("2025-03-04T05:06:07.123+02:00"),
            "2025-03-04 05:06 +02:00"
        );
        assert_eq!(short_time("yesterday"), "yesterday");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(185.0), "3m 05s");
        assert_eq!(duration(3720.0), "1h 02m");
    }
}
