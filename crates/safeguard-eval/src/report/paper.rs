//! Numbers quoted from the paper ("Towards Policy-Adaptive Image Guardrail", as collected in
//! REFERENCE.md), shown beside our runs only when asked for and never used in any of our
//! computations. Values are percentages, as printed in the paper.

/// One quoted row: a guard (or training variant) and its per-policy numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotedRow {
    /// Who the row is about, as the paper names it.
    pub name: &'static str,
    /// Scores under L1..L5, percent (F1; accuracy for L1).
    pub scores: [f64; 5],
    /// The paper's "Overall" column, percent; `None` where the paper prints none.
    pub overall: Option<f64>,
}

/// The policy names of the quoted columns.
pub const POLICIES: [&str; 5] = ["L1", "L2", "L3", "L4", "L5"];

/// Table 6: guards compared on SafeEditBench. The "Overall" column is the paper's and is not
/// always the mean of its five numbers.
pub const TABLE6: &[QuotedRow] = &[
    QuotedRow {
        name: "Qwen2.5-VL-7B",
        scores: [47.46, 20.59, 37.36, 70.87, 70.34],
        overall: Some(48.68),
    },
    QuotedRow {
        name: "LlavaGuard-7B",
        scores: [49.15, 16.67, 31.82, 66.13, 64.62],
        overall: Some(44.16),
    },
    QuotedRow {
        name: "ShieldGemma2",
        scores: [44.92, 5.63, 14.12, 37.29, 51.06],
        overall: Some(27.50),
    },
    QuotedRow {
        name: "Llama Guard",
        scores: [100.0, 0.0, 0.0, 42.37, 0.0],
        overall: Some(22.73),
    },
    QuotedRow {
        name: "SafeGuard-VL (RL)",
        scores: [44.07, 20.29, 35.16, 70.4, 64.71],
        overall: Some(45.59),
    },
    QuotedRow {
        name: "SafeGuard-VL (RL+SafeEditTrain)",
        scores: [54.24, 23.08, 35.9, 72.58, 66.17],
        overall: Some(49.43),
    },
];

/// Table 3: cross-policy generalisation, trained on one level and evaluated on all five.
pub const TABLE3: &[QuotedRow] = &[
    QuotedRow {
        name: "SFT on L1",
        scores: [100.0, 0.0, 0.0, 0.0, 0.0],
        overall: None,
    },
    QuotedRow {
        name: "RL on L1",
        scores: [50.0, 20.59, 35.0, 70.97, 65.69],
        overall: None,
    },
    QuotedRow {
        name: "SFT on L5",
        scores: [40.68, 19.18, 40.96, 73.02, 84.35],
        overall: None,
    },
    QuotedRow {
        name: "RL on L5",
        scores: [42.37, 18.42, 37.78, 71.64, 72.85],
        overall: None,
    },
];

/// The quoted score of `row` under `policy`, if the paper has that column.
pub fn score(row: &QuotedRow, policy: &str) -> Option<f64> {
    POLICIES
        .iter()
        .position(|p| *p == policy)
        .map(|i| row.scores[i])
}
