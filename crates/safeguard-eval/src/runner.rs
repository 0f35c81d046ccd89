//! The evaluation runner: every item of a [`Dataset`] through a [`Guard`], predictions
//! appended to `RUN_DIR/predictions.jsonl` as they finish, resumable after a kill.
//!
//! Run directory:
//!
//! - `run.json`: what was run ([`RunInfo`]): dataset, backend, model, mode, threshold, the
//!   policies' hashes and texts, code version, machine, timings. Written at the start,
//!   rewritten at the end.
//! - `predictions.jsonl`: one [`PredictionRow`] per item, in completion order, flushed after
//!   every batch. A run killed at any point leaves at most one partial last line; `--resume`
//!   drops it, skips the ids already present and judges the rest, so no row is lost or
//!   written twice.
//! - `summary.json`: [`Summary`], the metrics JSON of `safeguard metrics` plus per-category,
//!   per-source and edited-pair figures.
//! - `thumbs/`: small JPEG thumbnails of the wrongly judged or failed items (report gallery).

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use safeguard_core::guard::{apply_on_unparsable, Guard, GuardRequest, Judgement};
use safeguard_core::metrics::{self, GroupMetrics, MetricsReport};
use safeguard_core::predictions::Prediction;
use safeguard_core::prompt::Format;
use safeguard_core::verdict::{OnUnparsable, Verdict};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, ImageSource, Item};
use crate::EvalError;

/// File names inside a run directory.
pub const RUN_JSON: &str = "run.json";
/// See the module docs.
pub const PREDICTIONS: &str = "predictions.jsonl";
/// See the module docs.
pub const SUMMARY: &str = "summary.json";
/// See the module docs.
pub const THUMBS: &str = "thumbs";

/// Largest side of a thumbnail, in pixels.
const THUMB_SIZE: u32 = 160;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The run directory.
    pub out: PathBuf,
    /// Continue a killed run in `out` instead of refusing a non-empty directory.
    pub resume: bool,
    /// Items per `judge` call.
    pub batch_size: usize,
    /// P(unsafe) threshold passed to the guard.
    pub threshold: f64,
    /// Prompt format: verdict (score mode), reasoning or json.
    pub format: Format,
    /// What an output without a verdict counts as.
    pub on_unparsable: OnUnparsable,
    /// The backend's description for run.json (e.g. `local`).
    pub backend: String,
    /// The model, when the backend has one.
    pub model: Option<String>,
    /// Where the dataset came from (recorded in run.json, checked on resume).
    pub dataset_path: PathBuf,
    /// A name for the run (default: the directory name).
    pub name: Option<String>,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run's name.
    pub name: String,
    /// The dataset.
    pub dataset: DatasetInfo,
    /// The backend.
    pub backend: String,
    /// The model, if any.
    pub model: Option<String>,
    /// `score`, `reason` or `json`.
    pub mode: String,
    /// The threshold.
    pub threshold: f64,
    /// Every policy of the dataset: hash and text.
    pub policies: BTreeMap<String, PolicyInfo>,
    /// `safeguard` version and, when known, the git commit it was built from.
    pub code_version: String,
    /// Where it ran.
    pub machine: Machine,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC; null while running or after a kill.
    pub finished: Option<String>,
    /// Seconds spent judging, over all sessions of the run.
    pub elapsed_s: f64,
    /// Rows in predictions.jsonl.
    pub items_done: usize,
    /// Rows with an error.
    pub errors: usize,
}

/// The dataset part of [`RunInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// As given on the command line.
    pub path: String,
    /// `safeeditbench`, `unsafebench`, `llavaguard` or `jsonl`.
    pub format: String,
    /// The dataset's name.
    pub name: String,
    /// Items to judge.
    pub items: usize,
}

/// One policy of [`RunInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `Policy::hash`.
    pub hash: String,
    /// The text the model reads.
    pub text: String,
}

/// The machine of [`RunInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `linux`, `macos`…
    pub os: String,
    /// CPU model name, when readable.
    pub cpu: String,
    /// Logical cores available.
    pub cores: usize,
}

impl Machine {
    /// This machine.
    pub fn current() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Self {
            os: std::env::consts::OS.to_string(),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// One line of `predictions.jsonl`: the [`Prediction`] columns plus what the report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRow {
    /// Item id.
    pub id: String,
    /// Policy name.
    pub policy: String,
    /// Truth.
    pub label: Verdict,
    /// The guard's verdict; null when unassessed or failed.
    pub pred: Option<Verdict>,
    /// P(unsafe), when scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_unsafe: Option<f64>,
    /// Raw model output (reason/json modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The model's rationale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// Time the guard took (a batched call's time for each of its items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Item category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Item source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Edited-pair id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_id: Option<String>,
    /// Prohibited rules hit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_hit: Vec<String>,
    /// The guard's note (fallbacks, rules it could not judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why there is no judgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Thumbnail path relative to the run directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb: Option<String>,
}

impl PredictionRow {
    /// The metrics row, when there is a verdict.
    pub fn prediction(&self) -> Option<Prediction> {
        Some(Prediction {
            id: self.id.clone(),
            policy: self.policy.clone(),
            label: self.label,
            pred: self.pred?,
            p_unsafe: self.p_unsafe,
            output: None,
            latency_ms: self.latency_ms,
        })
    }
}

/// Edited pairs: the unsafe image and its safe edit under the same policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    /// Pairs with both items judged.
    pub n: usize,
    /// Pairs where both items were judged right (the guard told them apart).
    pub both_correct: usize,
    /// `both_correct / n` (0 when there is no pair).
    pub accuracy: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Per-policy, macro and pooled metrics (as `safeguard metrics --json`).
    #[serde(flatten)]
    pub metrics: MetricsReport,
    /// Metrics per item category.
    pub per_category: BTreeMap<String, GroupMetrics>,
    /// Metrics per item source.
    pub per_source: BTreeMap<String, GroupMetrics>,
    /// Edited-pair analysis.
    pub pairs: PairStats,
    /// Items without a verdict from the guard (excluded from the metrics).
    pub unassessed: usize,
    /// Items that failed (excluded from the metrics).
    pub errors: usize,
}

impl Summary {
    /// The one-line result `safeguard eval` prints: the macro score, pooled F1 and accuracy,
    /// pairs and the unassessed and failed counts; or, when no item was assessed (every row
    /// unassessed or failed), a line saying so instead of meaningless zeros.
    pub fn score_line(&self) -> String {
        if self.metrics.is_empty() {
            return format!(
                "no item was assessed ({} unassessed, {} errors): no score",
                self.unassessed, self.errors
            );
        }
        format!(
            "macro score {:.3}; pooled F1 {:.3}, accuracy {:.3}; pairs {}/{}; unassessed {}, \
             errors {}",
            self.metrics.macro_score,
            self.metrics.pooled.f1,
            self.metrics.pooled.accuracy,
            self.pairs.both_correct,
            self.pairs.n,
            self.unassessed,
            self.errors
        )
    }
}

/// Computes the summary of prediction rows.
pub fn summarize(rows: &[PredictionRow]) -> Summary {
    let predictions: Vec<Prediction> = rows.iter().filter_map(PredictionRow::prediction).collect();
    let group = |key: fn(&PredictionRow) -> Option<&String>| {
        let mut groups: BTreeMap<String, Vec<&Prediction>> = BTreeMap::new();
        let mut judged = predictions.iter();
        for row in rows.iter().filter(|r| r.pred.is_some()) {
            let p = judged.next().expect("one prediction per judged row");
            if let Some(k) = key(row) {
                groups.entry(k.clone()).or_default().push(p);
            }
        }
        groups
            .into_iter()
            .map(|(k, v)| (k, GroupMetrics::of(&v)))
            .collect::<BTreeMap<_, _>>()
    };
    let per_category = group(|r| r.category.as_ref());
    let per_source = group(|r| r.source.as_ref());
    let mut pairs: BTreeMap<(&str, &str), Vec<&PredictionRow>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.pred.is_some()) {
        if let Some(pair) = &row.pair_id {
            pairs.entry((pair, &row.policy)).or_default().push(row);
        }
    }
    let mut stats = PairStats::default();
    for members in pairs.values() {
        let has = |v: Verdict| members.iter().any(|r| r.label == v);
        if members.len() == 2 && has(Verdict::Safe) && has(Verdict::Unsafe) {
            stats.n += 1;
            if members.iter().all(|r| r.pred == Some(r.label)) {
                stats.both_correct += 1;
            }
        }
    }
    if stats.n > 0 {
        stats.accuracy = stats.both_correct as f64 / stats.n as f64;
    }
    Summary {
        metrics: metrics::compute(&predictions),
        per_category,
        per_source,
        pairs: stats,
        unassessed: rows
            .iter()
            .filter(|r| r.pred.is_none() && r.error.is_none())
            .count(),
        errors: rows.iter().filter(|r| r.error.is_some()).count(),
    }
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Rows already present from an earlier session.
    pub resumed: usize,
    /// Rows judged in this session.
    pub judged: usize,
    /// A partial last line dropped on resume.
    pub dropped_partial_line: bool,
    /// The summary written.
    pub summary: Summary,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn code_version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match commit {
        Some(c) if !c.is_empty() => format!("{version} ({c})"),
        _ => version.to_string(),
    }
}

fn mode_name(format: Format) -> &'static str {
    match format {
        Format::Verdict => "score",
        Format::Reasoning => "reason",
        Format::Json => "json",
    }
}

/// Reads the rows of an existing `predictions.jsonl`. A partial last line (a kill during the
/// write) is cut off the file; any other bad line is an error naming it.
pub fn read_predictions(
    path: &Path,
    repair: bool,
) -> Result<(Vec<PredictionRow>, bool), EvalError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut rows = Vec::new();
    let mut good_len = 0usize;
    let mut dropped = false;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if line.trim().is_empty() {
            good_len += line.len();
            continue;
        }
        match serde_json::from_str::<PredictionRow>(line.trim_end()) {
            Ok(row) if line.ends_with('\n') => {
                rows.push(row);
                good_len += line.len();
            }
            _ if last && repair => {
                dropped = true;
                break;
            }
            Ok(_) => {
                return Err(EvalError::Run {
                    path: path.to_path_buf(),
                    reason: format!("line {}: unterminated last line", i + 1),
                })
            }
            Err(e) => {
                return Err(EvalError::Run {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {e}", i + 1),
                })
            }
        }
    }
    if dropped {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        file.set_len(good_len as u64).map_err(io(path))?;
    }
    Ok((rows, dropped))
}

/// Runs `dataset` through `guard` into `cfg.out` (see the module docs). `progress` is called
/// with (rows done, rows in all) after every batch.
pub fn run(
    dataset: &Dataset,
    guard: &dyn Guard,
    cfg: &RunConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<RunOutcome, EvalError> {
    let out = &cfg.out;
    std::fs::create_dir_all(out.join(THUMBS)).map_err(io(out))?;
    let run_path = out.join(RUN_JSON);
    let pred_path = out.join(PREDICTIONS);
    let mut info = new_info(dataset, cfg);
    let (done, dropped) = if pred_path.exists() || run_path.exists() {
        if !cfg.resume {
            return Err(EvalError::Run {
                path: out.clone(),
                reason: "the run directory already holds a run; pass --resume to continue it, or choose another --out".into(),
            });
        }
        let previous: RunInfo = read_json(&run_path)?;
        check_same_run(&previous, &info, &run_path)?;
        info.started = previous.started;
        info.elapsed_s = previous.elapsed_s;
        if pred_path.exists() {
            read_predictions(&pred_path, true)?
        } else {
            (Vec::new(), false)
        }
    } else {
        (Vec::new(), false)
    };
    let known: HashSet<&str> = dataset.items.iter().map(|i| i.id.as_str()).collect();
    if let Some(stray) = done.iter().find(|r| !known.contains(r.id.as_str())) {
        return Err(EvalError::Run {
            path: pred_path.clone(),
            reason: format!(
                "holds id {:?}, which is not in the dataset: not the same run",
                stray.id
            ),
        });
    }
    let done_ids: HashSet<String> = done.iter().map(|r| r.id.clone()).collect();
    let todo: Vec<&Item> = dataset
        .items
        .iter()
        .filter(|i| !done_ids.contains(&i.id))
        .collect();
    write_json(&run_path, &info)?;

    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&pred_path)
        .map_err(io(&pred_path))?;
    let mut writer = BufWriter::new(file);
    let total = dataset.items.len();
    let resumed = done.len();
    let mut rows = done;
    let session = Instant::now();
    progress(rows.len(), total);
    for batch in todo.chunks(cfg.batch_size.max(1)) {
        let images: Vec<Result<Vec<u8>, String>> =
            batch.iter().map(|i| read_image(&i.image)).collect();
        let requests: Vec<GuardRequest<'_>> = batch
            .iter()
            .zip(&images)
            .filter_map(|(item, bytes)| {
                let bytes = bytes.as_ref().ok()?;
                Some(GuardRequest {
                    image: bytes,
                    policy: dataset.policies.get(&item.policy)?,
                    format: cfg.format,
                    threshold: cfg.threshold,
                })
            })
            .collect();
        let mut judged = safeguard_core::guard::judge_checked(guard, &requests).into_iter();
        for (item, bytes) in batch.iter().zip(&images) {
            let result = match bytes {
                Err(e) => Err(e.clone()),
                Ok(_) if !dataset.policies.contains_key(&item.policy) => Err(format!(
                    "policy {:?} is not defined by the dataset",
                    item.policy
                )),
                Ok(_) => apply_on_unparsable(
                    judged.next().expect("one result per request"),
                    cfg.on_unparsable,
                )
                .map_err(|e| e.to_string()),
            };
            let mut row = prediction_row(item, result);
            let wrong = row.error.is_some() || row.pred.is_some_and(|p| p != row.label);
            if wrong {
                if let Ok(bytes) = bytes {
                    row.thumb = write_thumb(out, &item.id, bytes);
                }
            }
            let line = serde_json::to_string(&row).expect("rows serialise");
            writeln!(writer, "{line}").map_err(io(&pred_path))?;
            rows.push(row);
        }
        writer.flush().map_err(io(&pred_path))?;
        progress(rows.len(), total);
    }
    writer
        .into_inner()
        .map_err(|e| io(&pred_path)(e.into_error()))?
        .sync_all()
        .map_err(io(&pred_path))?;

    let summary = summarize(&rows);
    write_json(&out.join(SUMMARY), &summary)?;
    info.elapsed_s += session.elapsed().as_secs_f64();
    info.items_done = rows.len();
    info.errors = summary.errors;
    info.finished = Some(now_rfc3339());
    write_json(&run_path, &info)?;
    Ok(RunOutcome {
        resumed,
        judged: rows.len() - resumed,
        dropped_partial_line: dropped,
        summary,
    })
}

fn new_info(dataset: &Dataset, cfg: &RunConfig) -> RunInfo {
    RunInfo {
        name: cfg.name.clone().unwrap_or_else(|| {
            cfg.out
                .file_name()
                .map_or("run".into(), |n| n.to_string_lossy().into_owned())
        }),
        dataset: DatasetInfo {
            path: cfg.dataset_path.display().to_string(),
            format: dataset.format.to_string(),
            name: dataset.name.clone(),
            items: dataset.items.len(),
        },
        backend: cfg.backend.clone(),
        model: cfg.model.clone(),
        mode: mode_name(cfg.format).to_string(),
        threshold: cfg.threshold,
        policies: dataset
            .policies
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    PolicyInfo {
                        hash: p.hash(),
                        text: p.prompt_text(),
                    },
                )
            })
            .collect(),
        code_version: code_version(),
        machine: Machine::current(),
        started: now_rfc3339(),
        finished: None,
        elapsed_s: 0.0,
        items_done: 0,
        errors: 0,
    }
}

/// A resumed run must judge the same items the same way.
fn check_same_run(previous: &RunInfo, now: &RunInfo, path: &Path) -> Result<(), EvalError> {
    let mut differences = Vec::new();
    if previous.dataset.name != now.dataset.name || previous.dataset.items != now.dataset.items {
        differences.push(format!(
            "dataset {} ({} items) vs {} ({} items)",
            previous.dataset.name, previous.dataset.items, now.dataset.name, now.dataset.items
        ));
    }
    if previous.backend != now.backend || previous.model != now.model {
        differences.push(format!(
            "backend {} {:?} vs {} {:?}",
            previous.backend, previous.model, now.backend, now.model
        ));
    }
    if previous.mode != now.mode || previous.threshold != now.threshold {
        differences.push(format!(
            "mode/threshold {}/{} vs {}/{}",
            previous.mode, previous.threshold, now.mode, now.threshold
        ));
    }
    let hashes = |i: &RunInfo| -> BTreeMap<String, String> {
        i.policies
            .iter()
            .map(|(k, v)| (k.clone(), v.hash.clone()))
            .collect()
    };
    if hashes(previous) != hashes(now) {
        differences.push("the policies' texts differ".into());
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(EvalError::Run {
            path: path.to_path_buf(),
            reason: format!(
                "--resume continues the same run, but this one differs: {}",
                differences.join("; ")
            ),
        })
    }
}

fn read_image(source: &ImageSource) -> Result<Vec<u8>, String> {
    match source {
        ImageSource::File(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        ImageSource::Bytes { bytes, .. } => Ok(bytes.to_vec()),
    }
}

fn prediction_row(item: &Item, result: Result<Judgement, String>) -> PredictionRow {
    let mut row = PredictionRow {
        id: item.id.clone(),
        policy: item.policy.clone(),
        label: item.label,
        pred: None,
        p_unsafe: None,
        output: None,
        rationale: None,
        latency_ms: None,
        category: item.category.clone(),
        source: item.source.clone(),
        pair_id: item.pair_id.clone(),
        rules_hit: Vec::new(),
        note: None,
        error: None,
        thumb: None,
    };
    match result {
        Ok(j) => {
            row.pred = j.verdict.verdict();
            row.p_unsafe = j.p_unsafe;
            row.output = j.raw_output;
            row.rationale = j.rationale;
            row.latency_ms = Some(j.latency_ms);
            row.rules_hit = j.rules_hit;
            row.note = j.note;
        }
        Err(e) => row.error = Some(e),
    }
    row
}

/// Writes a thumbnail; `None` when the image cannot be decoded (the row's error says why).
fn write_thumb(out: &Path, id: &str, bytes: &[u8]) -> Option<String> {
    let image =
        safeguard_vision::decode_image(bytes, &safeguard_vision::DecodeLimits::default()).ok()?;
    let thumb = image::imageops::thumbnail(
        &image,
        THUMB_SIZE.min(image.width()),
        (THUMB_SIZE as u64 * image.height() as u64 / image.width().max(1) as u64).max(1) as u32,
    );
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let rel = format!("{THUMBS}/{name}-{:08x}.jpg", fnv(id));
    let mut file = File::create(out.join(&rel)).ok()?;
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 80)
        .encode_image(&thumb)
        .ok()?;
    Some(rel)
}

/// A short stable hash so that ids differing only in punctuation get distinct file names.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EvalError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| EvalError::Run {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// Writes JSON atomically (temporary file, then rename), so a kill never leaves half a file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), EvalError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value).expect("serialises");
    std::fs::write(&tmp, text + "\n").map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
