//! Prediction rows: what a guard said about each (image, policy) item, next to the truth.
//!
//! Format (ARCHITECTURE.md): JSONL, one object per line,
//! `{"id", "policy", "label", "pred", "p_unsafe"?, "output"?, "latency_ms"?}`, or CSV with the
//! same columns. Labels and predictions are `safe`/`unsafe`; `0`/`1` (1 = unsafe) are accepted
//! on input. Every error names the line and the field.

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

/// Reads a predictions file: `.csv` as CSV, anything else as JSONL.
pub fn read_file(path: &Path) -> Result<Vec<Prediction>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_csv = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let rows = if is_csv {
        parse_csv(&text)
    } else {
        parse_jsonl(&text)
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

/// Parses JSONL predictions. Blank lines are skipped.
pub fn parse_jsonl(text: &str) -> Result<Vec<Prediction>, Error> {
    let mut rows = Vec::new();
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
        let p_unsafe = match object.get("p_unsafe") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(probability_field(
                line,
                v.as_f64().ok_or_else(|| {
                    row_error(line, "field \"p_unsafe\": expected a number in [0, 1]")
                })?,
            )?),
        };
        rows.push(Prediction {
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
    if rows.is_empty() {
        return Err(Error::NoPredictions);
    }
    Ok(rows)
}

/// Parses CSV predictions with a header row naming the columns (any order).
pub fn parse_csv(text: &str) -> Result<Vec<Prediction>, Error> {
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
    let mut rows = Vec::new();
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
        let p = optional_number(p_unsafe, "p_unsafe")?
            .map(|v| probability_field(line, v))
            .transpose()?;
        rows.push(Prediction {
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
    if rows.is_empty() {
        return Err(Error::NoPredictions);
    }
    Ok(rows)
}
