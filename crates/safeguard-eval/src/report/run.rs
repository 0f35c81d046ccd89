//! Loading a run directory (`run.json`, `predictions.jsonl`, `summary.json`) into a [`Run`].
//!
//! Metrics always come from `predictions.jsonl` through `safeguard_core::metrics::compute`,
//! so a report shows the same numbers as `safeguard metrics` on the same rows; `summary.json`
//! is read for what the rows cannot give (per-category or per-source groups, edited pairs) and
//! is checked against the recomputed metrics: a disagreement becomes a visible note.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use safeguard_core::metrics::{self, GroupMetrics, MetricsReport};
use safeguard_core::predictions::Prediction;
use safeguard_core::Verdict;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::ReportError;
use super::{io_error, parse_error};

/// Largest thumbnail embedded in a report, in bytes; larger files are left out with a note.
pub const MAX_THUMB_BYTES: u64 = 256 * 1024;

/// `run.json`: what was run, on what, where and when. Every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RunMeta {
    /// Name of the run (defaults to the directory name).
    pub name: Option<String>,
    /// The dataset evaluated.
    pub dataset: DatasetMeta,
    /// Backend: `local`, `remote`, `lite`, ...
    pub backend: Option<String>,
    /// Model directory or id.
    pub model: Option<String>,
    /// `score`, `reason` or `json`.
    pub mode: Option<String>,
    /// Decision threshold on `p_unsafe`.
    pub threshold: Option<f64>,
    /// Policy name → hash and text.
    pub policies: BTreeMap<String, PolicyMeta>,
    /// Version of the code that ran.
    pub code_version: Option<String>,
    /// Machine the run ran on.
    pub machine: MachineMeta,
    /// Start time, RFC 3339.
    pub started: Option<String>,
    /// End time, RFC 3339; missing while the run is unfinished.
    pub finished: Option<String>,
    /// Wall time, seconds.
    pub elapsed_s: Option<f64>,
    /// Items finished.
    pub items_done: Option<u64>,
    /// Items that ended in an error.
    pub errors: Option<u64>,
}

/// `run.json` `dataset`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DatasetMeta {
    /// Where it was read from.
    pub path: Option<String>,
    /// Format it was read as.
    pub format: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Items in the dataset.
    pub items: Option<u64>,
}

/// `run.json` `policies.NAME`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PolicyMeta {
    /// Hash of the policy text.
    pub hash: Option<String>,
    /// The policy text.
    pub text: Option<String>,
}

/// `run.json` `machine`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct MachineMeta {
    /// Operating system.
    pub os: Option<String>,
    /// CPU model.
    pub cpu: Option<String>,
    /// CPU cores.
    pub cores: Option<u64>,
}

/// One row of `predictions.jsonl`: a prediction row of `safeguard-core` plus what the runner
/// adds. `pred` is `None` for an item that was not assessed (refused, unparsable, error).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Item id.
    pub id: String,
    /// Policy the item was judged under.
    pub policy: String,
    /// The truth.
    pub label: Verdict,
    /// The guard's verdict; `None` = unassessed.
    pub pred: Option<Verdict>,
    /// P(unsafe), in [0, 1].
    pub p_unsafe: Option<f64>,
    /// Raw model output.
    pub output: Option<String>,
    /// Rationale given by the guard.
    pub rationale: Option<String>,
    /// Milliseconds spent on the item.
    pub latency_ms: Option<f64>,
    /// Dataset category.
    pub category: Option<String>,
    /// Dataset source (e.g. real / generated).
    pub source: Option<String>,
    /// Edited-pair id: the unsafe image and its safe edit share it.
    pub pair_id: Option<String>,
    /// Policy rules the guard reported as hit.
    pub rules_hit: Vec<String>,
    /// Error message when the item failed.
    pub error: Option<String>,
    /// Thumbnail path relative to the run directory.
    pub thumb: Option<String>,
}

impl Row {
    /// The row as a `safeguard-core` prediction; `None` when unassessed.
    pub fn prediction(&self) -> Option<Prediction> {
        Some(Prediction {
            id: self.id.clone(),
            policy: self.policy.clone(),
            label: self.label,
            pred: self.pred?,
            p_unsafe: self.p_unsafe,
            output: self.output.clone(),
            latency_ms: self.latency_ms,
        })
    }

    /// `true` when assessed and wrong.
    pub fn is_wrong(&self) -> bool {
        self.pred.is_some_and(|p| p != self.label)
    }

    /// How sure the guard was of the verdict it gave: `p_unsafe` for an unsafe verdict,
    /// `1 - p_unsafe` for a safe one.
    pub fn confidence(&self) -> Option<f64> {
        let p = self.p_unsafe?;
        Some(match self.pred? {
            Verdict::Unsafe => p,
            Verdict::Safe => 1.0 - p,
        })
    }
}

/// Edited pairs: how often both images of a pair (the unsafe one and its safe edit, under one
/// policy) were judged right.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct PairStats {
    /// Pairs with both images present.
    pub n: u64,
    /// Pairs with both images judged right.
    pub both_correct: u64,
    /// `both_correct / n` (0 when there is no pair).
    pub accuracy: f64,
}

/// Where the metrics of a run come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsSource {
    /// Recomputed from `predictions.jsonl`.
    Predictions,
    /// Taken from `summary.json` (no `predictions.jsonl` in the directory).
    Summary,
}

/// A loaded run directory.
#[derive(Debug, Clone)]
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// `run.json`.
    pub meta: RunMeta,
    /// `predictions.jsonl` rows, in file order.
    pub rows: Vec<Row>,
    /// Per-policy, macro and pooled metrics over the assessed rows.
    pub metrics: MetricsReport,
    /// Where [`Run::metrics`] comes from.
    pub metrics_source: MetricsSource,
    /// Metrics per dataset category (empty when none is known).
    pub per_category: BTreeMap<String, GroupMetrics>,
    /// Metrics per dataset source (empty when none is known).
    pub per_source: BTreeMap<String, GroupMetrics>,
    /// Edited-pair accuracy, when the rows have pair ids.
    pub pairs: Option<PairStats>,
    /// Rows without a verdict (excluded from the metrics).
    pub unassessed: u64,
    /// Rows that ended in an error.
    pub errors: u64,
    /// Thumbnail path (as in the rows) → `data:` URL.
    pub thumbs: BTreeMap<String, String>,
    /// Warnings worth showing beside the run (summary mismatch, missing thumbnails, ...).
    pub notes: Vec<String>,
}

impl Run {
    /// Display name: `run.json` `name`, else the directory's name.
    pub fn name(&self) -> String {
        self.meta
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| {
                self.dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// Rows that have a `p_unsafe` and a label.
    pub fn scored_rows(&self) -> impl Iterator<Item = (f64, Verdict)> + '_ {
        self.rows
            .iter()
            .filter_map(|r| r.p_unsafe.map(|p| (p, r.label)))
    }
}

/// Loads `dir/run.json`, `dir/predictions.jsonl` and, when present, `dir/summary.json`.
///
/// Errors name the file (and the line, for predictions) at fault.
pub fn load_run(dir: &Path) -> Result<Run, ReportError> {
    if !dir.is_dir() {
        return Err(parse_error(
            dir,
            None,
            "not a run directory (expected a folder with run.json and predictions.jsonl)",
        ));
    }
    let meta_path = dir.join("run.json");
    let meta_text = std::fs::read_to_string(&meta_path).map_err(|e| io_error(&meta_path, e))?;
    let meta: RunMeta = serde_json::from_str(&meta_text)
        .map_err(|e| parse_error(&meta_path, Some(e.line()), format!("invalid run.json: {e}")))?;

    let summary_path = dir.join("summary.json");
    let summary: Option<Value> = if summary_path.exists() {
        let text =
            std::fs::read_to_string(&summary_path).map_err(|e| io_error(&summary_path, e))?;
        Some(serde_json::from_str(&text).map_err(|e| {
            parse_error(
                &summary_path,
                Some(e.line()),
                format!("invalid summary.json: {e}"),
            )
        })?)
    } else {
        None
    };

    let predictions_path = dir.join("predictions.jsonl");
    let mut notes = Vec::new();
    let (rows, metrics, metrics_source) = if predictions_path.exists() {
        let text = std::fs::read_to_string(&predictions_path)
            .map_err(|e| io_error(&predictions_path, e))?;
        let rows = parse_rows(&text)
            .map_err(|(line, message)| parse_error(&predictions_path, Some(line), message))?;
        let assessed: Vec<Prediction> = rows.iter().filter_map(Row::prediction).collect();
        let metrics = metrics::compute(&assessed);
        if let Some(summary) = &summary {
            notes.extend(check_summary(summary, &metrics));
        }
        (rows, metrics, MetricsSource::Predictions)
    } else {
        let from_summary = summary
            .as_ref()
            .and_then(|s| serde_json::from_value::<MetricsReport>(s.clone()).ok());
        match from_summary {
            Some(metrics) => {
                notes.push(
                    "no predictions.jsonl: metrics are those of summary.json, without plots or errors"
                        .to_string(),
                );
                (Vec::new(), metrics, MetricsSource::Summary)
            }
            None => {
                return Err(io_error(
                    &predictions_path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                ))
            }
        }
    };

    let per_category = groups_of(&rows, |r| r.category.as_deref())
        .or_else(|| summary_groups(summary.as_ref(), "per_category"))
        .unwrap_or_default();
    let per_source = groups_of(&rows, |r| r.source.as_deref())
        .or_else(|| summary_groups(summary.as_ref(), "per_source"))
        .unwrap_or_default();
    let pairs = pair_stats(&rows).or_else(|| {
        summary
            .as_ref()
            .and_then(|s| s.get("pairs"))
            .and_then(|p| serde_json::from_value::<PairStats>(p.clone()).ok())
            .filter(|p| p.n > 0)
    });
    let unassessed = rows.iter().filter(|r| r.pred.is_none()).count() as u64;
    let errors = rows.iter().filter(|r| r.error.is_some()).count() as u64;
    let thumbs = load_thumbs(dir, &rows, &mut notes);
    if meta.finished.is_none() && meta.started.is_some() {
        notes.push("run.json has no finish time: the run is unfinished or was killed".into());
    }

    Ok(Run {
        dir: dir.to_path_buf(),
        meta,
        rows,
        metrics,
        metrics_source,
        per_category,
        per_source,
        pairs,
        unassessed,
        errors,
        thumbs,
        notes,
    })
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(format!("field \"{name}\": expected a string")),
    }
}

fn number_field(object: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("field \"{name}\": expected a number")),
    }
}

fn verdict_field(object: &Map<String, Value>, name: &str) -> Result<Option<Verdict>, String> {
    let text = match object.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(format!("field \"{name}\": expected \"safe\" or \"unsafe\"")),
    };
    Verdict::from_label(&text).map(Some).ok_or_else(|| {
        format!("field \"{name}\": unknown value {text:?} (expected safe, unsafe, 0 or 1)")
    })
}

fn parse_row(raw: &str) -> Result<Row, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))?;
    let object = value.as_object().ok_or("expected a JSON object")?;
    let required = |name: &str| -> Result<String, String> {
        string_field(object, name)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| format!("missing or empty field \"{name}\""))
    };
    let p_unsafe = number_field(object, "p_unsafe")?;
    if let Some(p) = p_unsafe {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!(
                "field \"p_unsafe\": {p} is not a probability in [0, 1]"
            ));
        }
    }
    let rules_hit = match object.get("rules_hit") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Ok(other.to_string()),
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("field \"rules_hit\": expected a list of strings".into()),
    };
    Ok(Row {
        id: required("id")?,
        policy: required("policy")?,
        label: verdict_field(object, "label")?.ok_or("missing field \"label\"")?,
        pred: verdict_field(object, "pred")?,
        p_unsafe,
        output: string_field(object, "output")?,
        rationale: string_field(object, "rationale")?,
        latency_ms: number_field(object, "latency_ms")?,
        category: string_field(object, "category")?,
        source: string_field(object, "source")?,
        pair_id: string_field(object, "pair_id")?,
        rules_hit,
        error: string_field(object, "error")?,
        thumb: string_field(object, "thumb")?,
    })
}

/// Parses `predictions.jsonl`; blank lines are skipped. The error is `(line, message)`, lines
/// counted from 1.
pub fn parse_rows(text: &str) -> Result<Vec<Row>, (usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, raw)| !raw.trim().is_empty())
        .map(|(index, raw)| parse_row(raw).map_err(|message| (index + 1, message)))
        .collect()
}

/// Metrics per key (category, source) over the assessed rows; `None` when no row has a key.
fn groups_of(
    rows: &[Row],
    key: impl Fn(&Row) -> Option<&str>,
) -> Option<BTreeMap<String, GroupMetrics>> {
    let mut groups: BTreeMap<String, Vec<Prediction>> = BTreeMap::new();
    for row in rows {
        if let (Some(k), Some(p)) = (key(row), row.prediction()) {
            groups.entry(k.to_string()).or_default().push(p);
        }
    }
    if groups.is_empty() {
        return None;
    }
    Some(
        groups
            .into_iter()
            .map(|(k, rows)| {
                let refs: Vec<&Prediction> = rows.iter().collect();
                (k, GroupMetrics::of(&refs))
            })
            .collect(),
    )
}

fn summary_groups(summary: Option<&Value>, key: &str) -> Option<BTreeMap<String, GroupMetrics>> {
    serde_json::from_value(summary?.get(key)?.clone()).ok()
}

/// Edited pairs from `pair_id`: rows grouped by (policy, pair id); a group of two or more rows
/// is a pair, right when every row of it was judged right (unassessed counts as wrong).
pub fn pair_stats(rows: &[Row]) -> Option<PairStats> {
    let mut groups: BTreeMap<(&str, &str), (usize, bool)> = BTreeMap::new();
    for row in rows {
        if let Some(pair) = row.pair_id.as_deref() {
            let entry = groups
                .entry((row.policy.as_str(), pair))
                .or_insert((0, true));
            entry.0 += 1;
            entry.1 &= row.pred == Some(row.label);
        }
    }
    if groups.is_empty() {
        return None;
    }
    let pairs: Vec<bool> = groups
        .values()
        .filter(|(count, _)| *count >= 2)
        .map(|(_, right)| *right)
        .collect();
    let n = pairs.len() as u64;
    let both_correct = pairs.iter().filter(|r| **r).count() as u64;
    Some(PairStats {
        n,
        both_correct,
        accuracy: if n == 0 {
            0.0
        } else {
            both_correct as f64 / n as f64
        },
    })
}

/// Compares `summary.json` with the recomputed metrics; returns the differences found.
fn check_summary(summary: &Value, computed: &MetricsReport) -> Vec<String> {
    let mut notes = Vec::new();
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() <= 1e-6);
    if let Some(m) = summary.get("macro").and_then(Value::as_f64) {
        if !close(Some(m), computed.macro_score) {
            notes.push(format!(
                "summary.json macro {:.4} differs from the predictions' {:.4}: the report uses the predictions",
                m, computed.macro_score
            ));
        }
    }
    if let Some(per_policy) = summary.get("per_policy").and_then(Value::as_object) {
        for (name, m) in per_policy {
            let Some(ours) = computed.per_policy.get(name) else {
                notes.push(format!(
                    "summary.json has policy {name} which predictions.jsonl lacks"
                ));
                continue;
            };
            let n = m.get("n").and_then(Value::as_u64);
            let score = m.get("score").and_then(Value::as_f64);
            if n.is_some_and(|n| n != ours.n) || (score.is_some() && !close(score, ours.score)) {
                notes.push(format!(
                    "summary.json policy {name} differs from the predictions: the report uses the predictions"
                ));
            }
        }
    }
    notes
}

/// Reads the thumbnails the rows point to and turns them into `data:` URLs. Paths must stay
/// inside the run directory; unreadable, oversized or non-image files become one note.
fn load_thumbs(dir: &Path, rows: &[Row], notes: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut thumbs = BTreeMap::new();
    let mut skipped: Vec<String> = Vec::new();
    for thumb in rows.iter().filter_map(|r| r.thumb.as_deref()) {
        if thumbs.contains_key(thumb) || skipped.iter().any(|s| s == thumb) {
            continue;
        }
        match read_thumb(dir, thumb) {
            Some(url) => {
                thumbs.insert(thumb.to_string(), url);
            }
            None => skipped.push(thumb.to_string()),
        }
    }
    if !skipped.is_empty() {
        notes.push(format!(
            "{} thumbnail(s) missing, unreadable, larger than {} KiB or outside the run directory (first: {})",
            skipped.len(),
            MAX_THUMB_BYTES / 1024,
            skipped[0]
        ));
    }
    thumbs
}

fn read_thumb(dir: &Path, relative: &str) -> Option<String> {
    let rel = Path::new(relative);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    let path = dir.join(rel);
    if std::fs::metadata(&path).ok()?.len() > MAX_THUMB_BYTES {
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    let mime = image_mime(&bytes)?;
    Some(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    ))
}

/// The MIME type of JPEG, PNG, WebP and GIF bytes, from their magic numbers.
fn image_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.starts_with(b"GIF8") {
        Some("image/gif")
    } else {
        None
    }
}
