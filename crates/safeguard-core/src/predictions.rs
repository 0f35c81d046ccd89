//! Prediction rows: what a guard said about each (image, policy) item, next to the truth.
//!
//! Format (ARCHITECTURE.md): JSONL, one object per line,
//! `{"id", "policy", "label", "pred", "p_unsafe"?, "output"?, "latency_ms"?}`, or CSV with the
//! same columns. Labels and predictions are `safe`/`unsafe`; `0`/`1` (1 = unsafe) are accepted
//! on input. Every error names the line and the field.
//!
//! A row without a verdict (`"pred": null`, as `safeguard eval` writes an item that the guard
//! could not assess or that failed; an empty `pred` cell in CSV) is an [`Unassessed`] row:
//! [`read_file_all`] / [`parse_jsonl_all`] / [`parse_csv_all`] return those apart from the
//! [`Prediction`]s, which are what the metrics are computed on. The plain [`read_file`] /
//! [`parse_jsonl`] / [`parse_csv`] refuse them (an error naming the first such line).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::verdict::Verdict;

/// One prediction row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Item id, unique within a run.
    pub id: String,
    /// Name of the policy the item was judged under.
    pub policy: String,
    /// The true verdict.
    pub label: Verdict,
    /// The guard's verdict.
    pub pred: Verdict,
    /// The guard's probability that the item is unsafe, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_unsafe: Option<f64>,
    /// The raw model output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Time the guard took for this item, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

/// A row without a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unassessed {
    /// 1-based line number in the file.
    pub line: usize,
    /// Item id.
    pub id: String,
    /// Policy name.
    pub policy: String,
    /// Why there is no judgement, when the row says (`safeguard eval`'s `error` field: the item
    /// failed rather than went unassessed).
    pub error: Option<String>,
}

/// A predictions file: the rows with a verdict and, apart, those without.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PredictionFile {
    /// Rows with a verdict, in file order.
    pub rows: Vec<Prediction>,
    /// Rows without one (`pred` null), in file order.
    pub unassessed: Vec<Unassessed>,
}

impl PredictionFile {
    /// The rows, or an error at the first unassessed line (for callers that need a verdict
    /// on every row).
    fn all_assessed(self) -> Result<Vec<Prediction>, Error> {
        match self.unassessed.first() {
            Some(u) => Err(row_error(
                u.line,
                "field \"pred\" is null (an unassessed item); read the file with read_file_all \
                 to count such rows apart",
            )),
            None => Ok(self.rows),
        }
    }
}

/// Reads a predictions file: `.csv` as CSV, anything else as JSONL. Unassessed rows are an
/// error; [`read_file_all`] keeps them apart.
pub fn read_file(path: &Path) -> Result<Vec<Prediction>, Error> {
    read_file_all(path)?
        .all_assessed()
        .map_err(|e| e.in_file(path))
}

/// Reads a predictions file (`.csv` as CSV, anything else as JSONL), unassessed rows apart.
/// A file without any row, assessed or not, is [`Error::NoPredictions`].
pub fn read_file_all(path: &Path) -> Result<PredictionFile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_csv = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let rows = if is_csv {
        parse_csv_all(&text)
    } else {
        parse_jsonl_all(&text)
    };
    rows.map_err(|e| e.in_file(path))
}

fn row_error(line: usize, message: impl Into<String>) -> Error {
    Error::Predictions {
        line,
        message: message.into(),
    }
}

fn verdict_field(line: usize, field: &str, value: &str) -> Result<Verdict, Error> {
    Verdict::from_label(value).ok_or_else(|| {
        row_error(
            line,
            format!("field \"{field}\": unknown value {value:?} (expected safe, unsafe, 0 or 1)"),
        )
    })
}

fn non_empty(line: usize, field: &str, value: String) -> Result<String, Error> {
    if value.trim().is_empty() {
        Err(row_error(line, format!("field \"{field}\" is empty")))
    } else {
        Ok(value)
    }
}

fn probability_field(line: usize, value: f64) -> Result<f64, Error> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(row_error(
            line,
            format!("field \"p_unsafe\": {value} is not a probability in [0, 1]"),
        ))
    }
}

/// Parses JSONL predictions. Blank lines are skipped; unassessed rows are an error.
pub fn parse_jsonl(text: &str) -> Result<Vec<Prediction>, Error> {
    parse_jsonl_all(text)?.all_assessed()
}

/// Parses JSONL predictions, rows with `"pred": null` apart. Blank lines are skipped.
pub fn parse_jsonl_all(text: &str) -> Result<PredictionFile, Error> {
    let mut out = PredictionFile::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| row_error(line, format!("invalid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| row_error(line, "expected a JSON object"))?;
        let text_field = |name: &str| -> Result<String, Error> {
            match object.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                Some(_) => Err(row_error(
                    line,
                    format!("field \"{name}\": expected a string"),
                )),
                None => Err(row_error(line, format!("missing field \"{name}\""))),
            }
        };
        if matches!(object.get("pred"), Some(serde_json::Value::Null)) {
            out.unassessed.push(Unassessed {
                line,
                id: non_empty(line, "id", text_field("id")?)?,
                policy: non_empty(line, "policy", text_field("policy")?)?,
                error: object
                    .get("error")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            });
            continue;
        }
        let p_unsafe = match object.get("p_unsafe") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(probability_field(
                line,
                v.as_f64().ok_or_else(|| {
                    row_error(line, "field \"p_unsafe\": expected a number in [0, 1]")
                })?,
            )?),
        };
        out.rows.push(Prediction {
            id: non_empty(line, "id", text_field("id")?)?,
            policy: non_empty(line, "policy", text_field("policy")?)?,
            label: verdict_field(line, "label", &text_field("label")?)?,
            pred: verdict_field(line, "pred", &text_field("pred")?)?,
            p_unsafe,
            output: object
                .get("output")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            latency_ms: object.get("latency_ms").and_then(|v| v.as_f64()),
        });
    }
    if out.rows.is_empty() && out.unassessed.is_empty() {
        return Err(Error::NoPredictions);
    }
    Ok(out)
}

/// Parses CSV predictions with a header row naming the columns (any order); unassessed
/// rows are an error.
pub fn parse_csv(text: &str) -> Result<Vec<Prediction>, Error> {
    parse_csv_all(text)?.all_assessed()
}

/// Parses CSV predictions, rows with an empty `pred` cell apart.
pub fn parse_csv_all(text: &str) -> Result<PredictionFile, Error> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| row_error(1, format!("invalid CSV header: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let required = |name: &str| {
        column(name).ok_or_else(|| {
            let have: Vec<&str> = headers.iter().collect();
            row_error(
                1,
                format!(
                    "missing column \"{name}\" (the header has: {}; required: id, policy, label, pred)",
                    have.join(", ")
                ),
            )
        })
    };
    let (id, policy, label, pred) = (
        required("id")?,
        required("policy")?,
        required("label")?,
        required("pred")?,
    );
    let (p_unsafe, output, latency) = (column("p_unsafe"), column("output"), column("latency_ms"));
    let error_column = column("error");
    let mut out = PredictionFile::default();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            row_error(line, format!("invalid CSV: {e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let get = |i: usize| record.get(i).unwrap_or("");
        let optional_number = |i: Option<usize>, name: &str| -> Result<Option<f64>, Error> {
            match i.map(get).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => s.parse::<f64>().map(Some).map_err(|_| {
                    row_error(line, format!("field \"{name}\": {s:?} is not a number"))
                }),
            }
        };
        if get(pred).is_empty() {
            out.unassessed.push(Unassessed {
                line,
                id: non_empty(line, "id", get(id).to_string())?,
                policy: non_empty(line, "policy", get(policy).to_string())?,
                error: error_column
                    .map(get)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            });
            continue;
        }
        let p = optional_number(p_unsafe, "p_unsafe")?
            .map(|v| probability_field(line, v))
            .transpose()?;
        out.rows.push(Prediction {
            id: non_empty(line, "id", get(id).to_string())?,
            policy: non_empty(line, "policy", get(policy).to_string())?,
            label: verdict_field(line, "label", get(label))?,
            pred: verdict_field(line, "pred", get(pred))?,
            p_unsafe: p,
            output: output
                .map(get)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            latency_ms: optional_number(latency, "latency_ms")?,
        });
    }
    if out.rows.is_empty() && out.unassessed.is_empty() {
        return Err(Error::NoPredictions);
    }
    Ok(out)
}
