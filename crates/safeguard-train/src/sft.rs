//! Stage 1: supervised fine-tuning (image → recaption) with LoRA, resumable bit for bit.
//!
//! A run directory holds:
//!
//! - `run.json`: the resolved configuration and the hashes of its identity
//!   ([`SftConfig::identity`]) and of the data; a directory written under other settings is
//!   refused, naming every differing key;
//! - `metrics.jsonl`: one line per logged step (`step`, `epoch`, `loss`, `grad_norm`,
//!   `learning_rate`, `tokens_per_second`, `num_tokens`, …) and per evaluation (`eval_loss`);
//! - `checkpoint-{step}/`: `adapter/` (PEFT files), `optimizer.safetensors` (AdamW moments and
//!   step), `trainer_state.json` (step, data cursor, seed, hashes); written into a temporary
//!   directory and renamed, so a killed run never leaves a half checkpoint; the oldest are
//!   removed beyond `save_total_limit`;
//! - `adapter/`: the final adapter.
//!
//! **Exact resume.** Nothing random is carried in state: the LoRA init comes from `seed`, the
//! order of epoch `e` from `(seed, e)`, and step `s` takes batch `s mod steps_per_epoch` of
//! epoch `s / steps_per_epoch`. The optimizer state is saved in full (f32), so a run of `N`
//! steps and one of `N/2` steps, killed, resumed and run to `N` give identical bits on CPU.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::tokenizer::QwenTokenizer;
use safeguard_engine::weights::parse_dtype;
use safeguard_engine::{load_model, load_model_with, parse_device, LoadOptions, LoadedModel};
use safeguard_model::qwen2_5_vl::train::{TrainOptions, TrainRow};
use safeguard_model::qwen2_5_vl::{Prompt, Qwen2_5VlModel, VisionInputs, WeightLayout};
use safeguard_vision::{decode_image, image_tokens, preprocess, DecodeLimits, PreprocessConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{differences, Mode, PeftLayout, SftConfig};
use crate::data::{read_jsonl, tokenize, Tokenized};
use crate::error::{io, Result, TrainError};
use crate::full::{FullParams, TrainableBackend};
use crate::lora::{stream_seed, SeededDropout, TrainableLora};
use crate::optim::{clip_grad_norm, AdamW};

/// Options of one invocation (not part of the run's identity).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint of the run directory.
    pub resume: bool,
    /// Stop (after saving a checkpoint) once this step is reached; the schedule still spans
    /// the whole run. For tests and for splitting a run across sessions.
    pub stop_at: Option<u64>,
}

/// What the trainer reports while it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// Data read and the model loaded.
    Started {
        /// First step to run (0, or the resumed checkpoint's step).
        start_step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// Training examples (after holdout and length filtering).
        train_examples: usize,
        /// Held-out examples.
        eval_examples: usize,
        /// Examples skipped for exceeding `data.max_length`.
        skipped: usize,
        /// Trainable values.
        parameters: usize,
    },
    /// An optimizer step finished.
    Step(StepMetrics),
    /// Held-out loss computed.
    Eval {
        /// After this step.
        step: u64,
        /// Mean cross-entropy over the held-out target tokens.
        loss: f64,
    },
    /// A checkpoint was written.
    Saved {
        /// Its step.
        step: u64,
        /// Its directory.
        path: PathBuf,
    },
}

/// One step's numbers (the metrics JSONL line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    /// Steps done (1-based).
    pub step: u64,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// Token-mean cross-entropy over the step's target tokens.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of this update.
    pub learning_rate: f64,
    /// Tokens (all positions, images included) processed per second in this step.
    pub tokens_per_second: f64,
    /// Tokens processed so far in this invocation.
    pub num_tokens: u64,
    /// Target tokens of this step.
    pub target_tokens: usize,
    /// Seconds this step took.
    pub step_time: f64,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Steps done.
    pub steps: u64,
    /// Whether the run reached its last step (false when stopped by `stop_at`).
    pub finished: bool,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Last held-out loss.
    pub last_eval_loss: Option<f64>,
    /// Where the final adapter (or the stopping checkpoint) is.
    pub output: PathBuf,
}

/// `trainer_state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Steps done.
    pub global_step: u64,
    /// Steps of the run.
    pub total_steps: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Where the data stands: epoch and batch within it of the next step.
    pub cursor: Cursor,
    /// The run's seed.
    pub seed: u64,
    /// Hash of the configuration's identity.
    pub config_hash: String,
    /// Hash of the data files.
    pub data_hash: String,
    /// The base model, as configured.
    pub base_model: String,
}

/// Position in the data.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    /// 0-based epoch.
    pub epoch: u64,
    /// 0-based batch within the epoch.
    pub batch: u64,
}

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    identity: serde_json::Value,
    config_hash: String,
    data_hash: String,
    config: SftConfig,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// An example prepared for training.
struct Row {
    tok: Tokenized,
}

/// The loaded pieces of a run.
struct Setup {
    model: Qwen2_5VlModel,
    layout: WeightLayout,
    device: Device,
    preprocess: PreprocessConfig,
    train: Vec<Row>,
    eval: Vec<Row>,
    skipped: usize,
    data_hash: String,
}

/// Loads the model (weights from `weights_from` when resuming a full fine-tune), the tokenizer,
/// the preprocessor settings and the data. In full mode the language model's weights are
/// `Var`s, returned as [`FullParams`].
fn load_setup(cfg: &SftConfig, weights_from: Option<&Path>) -> Result<(Setup, Option<FullParams>)> {
    let dir = resolve_model(&cfg.model.path, &HubOptions::default())?;
    let dtype = parse_dtype(&cfg.model.dtype)?;
    let device = parse_device(&cfg.model.device)?;
    let load = LoadOptions {
        dtype,
        device: device.clone(),
        ..LoadOptions::default()
    };
    let (LoadedModel { model, layout, .. }, full) = match cfg.train.mode {
        Mode::Lora => (load_model(&dir, &load)?, None),
        Mode::Full => {
            if dtype != DType::F32 {
                return Err(TrainError::Config {
                    reason: format!(
                        "train.mode = \"full\" trains the weights in place and needs model.dtype = \"f32\" (not {}): bf16 weights round small updates away",
                        cfg.model.dtype
                    ),
                });
            }
            let source = weights_from.unwrap_or(&dir);
            let made = Arc::new(Mutex::new(Vec::new()));
            let sink = made.clone();
            let loaded = load_model_with(source, &load, move |inner, layout| {
                Box::new(TrainableBackend::new(inner, layout, sink))
            })?;
            // Frozen tensors and other files are always copied from the base checkpoint
            // (older checkpoints of the run are rotated away).
            let params = FullParams::new(&made, &dir);
            (loaded, Some(params))
        }
    };
    let tokenizer = QwenTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut preprocess =
        PreprocessConfig::from_model_dir(&dir).map_err(|e| TrainError::Config {
            reason: format!("the preprocessor config of {}: {e}", dir.display()),
        })?;
    if let Some(v) = cfg.model.min_pixels {
        preprocess.min_pixels = v;
    }
    if let Some(v) = cfg.model.max_pixels {
        preprocess.max_pixels = v;
    }
    preprocess.validate().map_err(|e| TrainError::Config {
        reason: format!("model.min_pixels / model.max_pixels: {e}"),
    })?;
    let mut hasher = Sha256::new();
    let mut read = |path: &Path| -> Result<Vec<Row>> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        let examples = read_jsonl(path, cfg.data.image_root.as_deref())?;
        let mut rows = Vec::with_capacity(examples.len());
        for ex in &examples {
            let bad = |reason: String| TrainError::Data {
                path: path.to_path_buf(),
                line: ex.line,
                reason,
            };
            let mut counts = Vec::with_capacity(ex.images.len());
            for img in &ex.images {
                let image = load_image(img).map_err(bad)?;
                let (n, _) = image_tokens(image.width(), image.height(), &preprocess)
                    .map_err(|e| bad(format!("{}: {e}", img.display())))?;
                counts.push(n);
            }
            let tok = tokenize(&tokenizer, ex, &counts).map_err(bad)?;
            rows.push(Row { tok });
        }
        Ok(rows)
    };
    let mut train = read(&cfg.data.train)?;
    let mut eval = match &cfg.data.eval {
        Some(p) => read(p)?,
        None => Vec::new(),
    };
    let data_hash = sha256_hex(&hasher.finalize());
    let max = cfg.data.max_length;
    let before = train.len() + eval.len();
    train.retain(|r| r.tok.input_ids.len() <= max);
    eval.retain(|r| r.tok.input_ids.len() <= max);
    let skipped = before - train.len() - eval.len();
    if cfg.data.eval.is_none() && cfg.data.eval_fraction > 0.0 {
        let k = ((train.len() as f64 * cfg.data.eval_fraction).ceil() as usize)
            .min(train.len().saturating_sub(1));
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(stream_seed(
            cfg.train.seed,
            "holdout",
            0,
        )));
        let held: std::collections::HashSet<usize> = order[..k].iter().copied().collect();
        let mut kept = Vec::with_capacity(train.len() - k);
        for (i, r) in train.into_iter().enumerate() {
            if held.contains(&i) {
                eval.push(r);
            } else {
                kept.push(r);
            }
        }
        train = kept;
    }
    if train.is_empty() {
        return Err(TrainError::Config {
            reason: format!(
                "no training example left ({skipped} longer than data.max_length = {max})"
            ),
        });
    }
    Ok((
        Setup {
            model,
            layout,
            device,
            preprocess,
            train,
            eval,
            skipped,
            data_hash,
        },
        full,
    ))
}

fn load_image(path: &Path) -> Result<image::RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_image(&bytes, &DecodeLimits::default()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Steps per epoch and in all.
fn step_counts(cfg: &SftConfig, examples: usize) -> (u64, u64) {
    let per_step = (cfg.train.batch_size * cfg.train.grad_accum) as u64;
    let per_epoch = (examples as u64).div_ceil(per_step).max(1);
    let total = cfg.train.max_steps.unwrap_or(per_epoch * cfg.train.epochs);
    (per_epoch, total)
}

/// Warmup steps: `warmup_steps`, or `ceil(warmup_ratio · total)` as HF's `get_warmup_steps`.
fn warmup(cfg: &SftConfig, total: u64) -> u64 {
    cfg.train
        .warmup_steps
        .unwrap_or_else(|| (cfg.train.warmup_ratio * total as f64).ceil() as u64)
}

/// The order of the examples in epoch `epoch`: longest first, or shuffled from
/// `(seed, epoch)`.
fn epoch_order(cfg: &SftConfig, rows: &[Row], epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    if cfg.data.sort_by_length {
        order.sort_by_key(|&i| std::cmp::Reverse(rows[i].tok.input_ids.len()));
    } else {
        let seed = stream_seed(cfg.train.seed, "epoch", epoch);
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    order
}

/// Example indices of batch `batch` of an epoch in `order`.
fn batch_of(cfg: &SftConfig, order: &[usize], batch: u64) -> Vec<usize> {
    let per_step = cfg.train.batch_size * cfg.train.grad_accum;
    order
        .iter()
        .skip(batch as usize * per_step)
        .take(per_step)
        .copied()
        .collect()
}

/// Image embeddings of one example (a graph only through trained vision-tower LoRA pairs).
fn embed(setup: &Setup, row: &Row) -> Result<(Vec<[usize; 3]>, Option<Tensor>)> {
    if row.tok.images.is_empty() {
        return Ok((Vec::new(), None));
    }
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for path in &row.tok.images {
        let bad = |reason: String| TrainError::Data {
            path: path.clone(),
            line: row.tok.line,
            reason,
        };
        let image = load_image(path).map_err(bad)?;
        let p = preprocess(&image, &setup.preprocess).map_err(|e| bad(e.to_string()))?;
        grids.push(p.grid_thw);
        pixels.extend(p.pixel_values);
    }
    let dim = setup.preprocess.patch_dim();
    let rows = pixels.len() / dim;
    let pixel_values = Tensor::from_vec(pixels, (rows, dim), &setup.device)?;
    let embeds = setup.model.embed_images(&VisionInputs {
        pixel_values,
        grid_thw: grids.clone(),
    })?;
    // No detach: with vision-tower LoRA pairs the embeddings carry their graph (and
    // without any, there is none to keep).
    Ok((grids, Some(embeds)))
}

/// Images of `rows` embedded (one entry per row: grids and embeddings).
type Embedded = Vec<(Vec<[usize; 3]>, Option<Tensor>)>;

fn embed_rows(setup: &Setup, rows: &[&Row]) -> Result<Embedded> {
    rows.iter().map(|r| embed(setup, r)).collect()
}

/// The model's view of `rows` with their embedded images.
fn train_rows<'a>(rows: &[&'a Row], embedded: &'a Embedded) -> Vec<TrainRow<'a>> {
    rows.iter()
        .zip(embedded)
        .map(|(r, (grids, embeds))| TrainRow {
            prompt: Prompt {
                input_ids: &r.tok.input_ids,
                grids,
                image_embeds: embeds.as_ref(),
            },
            targets: &r.tok.targets,
        })
        .collect()
}

/// Runs `rows` (one micro-batch) through the training pass.
fn micro_batch(
    setup: &Setup,
    rows: &[&Row],
    vars: &[candle_core::Var],
    opts: &TrainOptions,
) -> Result<safeguard_model::qwen2_5_vl::train::TrainOutput> {
    let embedded = embed_rows(setup, rows)?;
    Ok(setup
        .model
        .train_step(&train_rows(rows, &embedded), vars, opts)?)
}

/// Mean held-out cross-entropy.
fn eval_loss(setup: &Setup, cfg: &SftConfig) -> Result<Option<f64>> {
    if setup.eval.is_empty() {
        return Ok(None);
    }
    let (mut sum, mut n) = (0f64, 0usize);
    let all: Vec<&Row> = setup.eval.iter().collect();
    for chunk in all.chunks(cfg.train.batch_size) {
        let embedded = embed_rows(setup, chunk)?;
        let (s, k) = setup
            .model
            .eval_loss(&train_rows(chunk, &embedded), cfg.train.head_chunk)?;
        sum += s;
        n += k;
    }
    Ok(Some(sum / n as f64))
}

/// Checkpoints `checkpoint-{step}` present in `dir`, oldest first (temporary ones ignored).
fn checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse::<u64>().ok()?;
            let path = e.path();
            path.join("trainer_state.json")
                .is_file()
                .then_some((step, path))
        })
        .collect();
    out.sort();
    out
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialisable") + "\n";
    std::fs::write(path, text).map_err(io(path))
}

/// What a run trains: a LoRA adapter or the whole language model.
enum Params {
    Lora(TrainableLora),
    Full(FullParams),
}

impl Params {
    fn vars(&self) -> Vec<Var> {
        match self {
            Params::Lora(l) => l.vars(),
            Params::Full(f) => f.vars(),
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Params::Lora(l) => l.names(),
            Params::Full(f) => f.names(),
        }
    }

    fn parameter_count(&self) -> usize {
        match self {
            Params::Lora(l) => l.parameter_count(),
            Params::Full(f) => f.parameter_count(),
        }
    }

    /// The folder name of the weights inside a checkpoint or the run directory.
    fn dir_name(&self) -> &'static str {
        match self {
            Params::Lora(_) => "adapter",
            Params::Full(_) => "model",
        }
    }

    fn save(&self, dir: &Path, base_model: &str) -> Result<()> {
        match self {
            Params::Lora(l) => l.save(dir, Some(base_model)),
            Params::Full(f) => f.save(dir),
        }
    }
}

/// Runs (or resumes) the SFT run `cfg` describes, reporting progress to `on_event`.
pub fn run_sft(
    cfg: &SftConfig,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Summary> {
    let out_dir = &cfg.train.output_dir;
    let identity = cfg.identity();
    let config_hash = sha256_hex(
        serde_json::to_string(&identity)
            .expect("serialisable")
            .as_bytes(),
    );
    let run_path = out_dir.join("run.json");
    let existing = checkpoints(out_dir);
    let old: Option<RunRecord> = if run_path.is_file() {
        let old: RunRecord = read_json(&run_path)?;
        let diffs = differences(&old.identity, &identity);
        if !diffs.is_empty() {
            return Err(TrainError::Resume {
                path: out_dir.clone(),
                reason: format!(
                    "it was written by other settings ({}); use another train.output_dir",
                    diffs.join("; ")
                ),
            });
        }
        if !opts.resume && !existing.is_empty() {
            return Err(TrainError::Resume {
                path: out_dir.clone(),
                reason: format!(
                    "it already holds checkpoints (up to step {}): pass --resume to continue, or use another train.output_dir",
                    existing.last().expect("non-empty").0
                ),
            });
        }
        Some(old)
    } else {
        if out_dir.join("metrics.jsonl").exists() || !existing.is_empty() {
            return Err(TrainError::Resume {
                path: out_dir.clone(),
                reason: "it holds training output but no run.json".into(),
            });
        }
        None
    };
    let resume_from = if opts.resume {
        existing.last().cloned()
    } else {
        None
    };
    let state = match &resume_from {
        None => None,
        Some((step, path)) => {
            let state: TrainerState = read_json(&path.join("trainer_state.json"))?;
            if state.config_hash != config_hash || state.global_step != *step {
                return Err(TrainError::Resume {
                    path: path.clone(),
                    reason: "its trainer_state.json does not belong to this run".into(),
                });
            }
            Some(state)
        }
    };
    let full_from = match (&resume_from, cfg.train.mode) {
        (Some((_, path)), Mode::Full) => Some(path.join("model")),
        _ => None,
    };
    let (mut setup, full) = load_setup(cfg, full_from.as_deref())?;
    if let Some(old) = &old {
        if old.data_hash != setup.data_hash {
            return Err(TrainError::Resume {
                path: out_dir.clone(),
                reason: "the data files changed since it was written".into(),
            });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    write_json(
        &run_path,
        &RunRecord {
            identity: identity.clone(),
            config_hash: config_hash.clone(),
            data_hash: setup.data_hash.clone(),
            config: cfg.clone(),
        },
    )?;

    let keys = match cfg.train.peft_layout {
        PeftLayout::Nested => WeightLayout::Nested,
        PeftLayout::Legacy => WeightLayout::Legacy,
    };
    let (per_epoch, total) = step_counts(cfg, setup.train.len());
    let start = state.as_ref().map_or(0, |s| s.global_step);
    if let Some(stop) = opts.stop_at {
        if stop <= start {
            return Err(TrainError::Config {
                reason: format!("--stop-at {stop}: the run is already at step {start}"),
            });
        }
    }
    let params = match (full, &resume_from) {
        (Some(full), _) => Params::Full(full),
        (None, None) => {
            let spec = cfg.lora.as_ref().expect("validated: lora mode has a spec");
            let lora = match &cfg.train.init_adapter {
                None => TrainableLora::init(
                    &mut setup.model,
                    spec,
                    keys,
                    cfg.train.seed,
                    &setup.device,
                )?,
                Some(dir) => {
                    let mut lora = TrainableLora::load(dir, setup.layout, &setup.device)?;
                    lora.conform_to(spec)?;
                    lora
                }
            };
            lora.attach(&mut setup.model)?;
            Params::Lora(lora)
        }
        (None, Some((_, path))) => {
            let lora = TrainableLora::load(&path.join("adapter"), setup.layout, &setup.device)?;
            lora.attach(&mut setup.model)?;
            Params::Lora(lora)
        }
    };
    let dropout = match &cfg.lora {
        Some(spec) if spec.dropout > 0.0 && matches!(params, Params::Lora(_)) => {
            let d = Arc::new(SeededDropout::new(spec.dropout));
            setup.model.set_lora_dropout(Some(d.clone()));
            Some(d)
        }
        _ => None,
    };
    let vars = params.vars();
    let names = params.names();
    let mut opt = AdamW::new(cfg.optim, &vars, names.clone())?;
    if let Some((_, path)) = &resume_from {
        opt.load(&path.join("optimizer.safetensors"), &setup.device)?;
        if opt.step != start {
            return Err(TrainError::Resume {
                path: path.clone(),
                reason: format!(
                    "the optimizer has taken {} steps, the checkpoint says {start}",
                    opt.step
                ),
            });
        }
    }
    let metrics_path = out_dir.join("metrics.jsonl");
    truncate_metrics(&metrics_path, start)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io(&metrics_path))?;
    on_event(&Event::Started {
        start_step: start,
        total_steps: total,
        train_examples: setup.train.len(),
        eval_examples: setup.eval.len(),
        skipped: setup.skipped,
        parameters: params.parameter_count(),
    });
    let warmup = warmup(cfg, total);
    let stop = opts.stop_at.map_or(total, |s| s.min(total));
    let mut last_loss = None;
    let mut last_eval = None;
    let mut num_tokens = 0u64;
    let base_model = cfg.model.path.clone();
    let save = |step: u64, opt: &AdamW| -> Result<PathBuf> {
        let final_dir = out_dir.join(format!("checkpoint-{step}"));
        let tmp = out_dir.join(format!(".checkpoint-{step}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        params.save(&tmp.join(params.dir_name()), &base_model)?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        let next = Cursor {
            epoch: step / per_epoch,
            batch: step % per_epoch,
        };
        write_json(
            &tmp.join("trainer_state.json"),
            &TrainerState {
                global_step: step,
                total_steps: total,
                epoch: step as f64 / per_epoch as f64,
                cursor: next,
                seed: cfg.train.seed,
                config_hash: config_hash.clone(),
                data_hash: setup.data_hash.clone(),
                base_model: base_model.clone(),
            },
        )?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        let all = checkpoints(out_dir);
        let excess = all.len().saturating_sub(cfg.train.save_total_limit);
        for (_, old) in &all[..excess] {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
        Ok(final_dir)
    };
    let train_opts = TrainOptions {
        recompute: cfg.train.recompute,
        head_chunk: cfg.train.head_chunk,
        grad_scale: 1.0,
    };
    // The current epoch's order, computed once per epoch.
    let mut order: Option<(u64, Vec<usize>)> = None;
    for step in start..stop {
        let began = Instant::now();
        let epoch = step / per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, epoch_order(cfg, &setup.train, epoch)));
        }
        let (_, epoch_rows) = order.as_ref().expect("set above");
        let indices = batch_of(cfg, epoch_rows, step % per_epoch);
        let rows: Vec<&Row> = indices.iter().map(|&i| &setup.train[i]).collect();
        let targets: usize = rows.iter().map(|r| r.tok.target_count()).sum();
        let tokens: usize = rows.iter().map(|r| r.tok.input_ids.len()).sum();
        // Token mean over the whole accumulated batch (TRL's num_items_in_batch).
        let opts_step = TrainOptions {
            grad_scale: 1.0 / targets as f64,
            ..train_opts
        };
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut loss_sum = 0f64;
        for (k, micro) in rows.chunks(cfg.train.batch_size).enumerate() {
            if let Some(d) = &dropout {
                d.set(Some((cfg.train.seed, step, k as u64)));
            }
            let out = micro_batch(&setup, micro, &vars, &opts_step)?;
            loss_sum += out.loss_sum;
            for (acc, g) in grads.iter_mut().zip(out.grads) {
                if let Some(g) = g {
                    *acc = Some(match acc.take() {
                        None => g,
                        Some(prev) => (prev + g)?,
                    });
                }
            }
        }
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&vars)
            .zip(&names)
            .map(|((g, var), name)| match (g, &params) {
                (Some(g), _) => Ok(g),
                // A full fine-tune has weights a batch may not reach (embedding rows of
                // tokens it lacks come back as zeros; a weight with no path at all is a bug
                // only for LoRA, whose every pair sits on the path).
                (None, Params::Full(_)) => {
                    Ok(Tensor::zeros(var.shape(), DType::F32, var.device())?)
                }
                (None, Params::Lora(_)) => Err(TrainError::Config {
                    reason: format!("no gradient reached `{name}`: a cut in the training graph"),
                }),
            })
            .collect::<Result<_>>()?;
        let loss = loss_sum / targets as f64;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss".into(),
                step: step + 1,
            });
        }
        let grad_norm = clip_grad_norm(&mut grads, cfg.train.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: "grad_norm".into(),
                step: step + 1,
            });
        }
        let lr = cfg.train.learning_rate * cfg.train.schedule.factor(step, warmup, total);
        opt.update(&vars, &grads, lr)?;
        let done = step + 1;
        let elapsed = began.elapsed().as_secs_f64();
        num_tokens += tokens as u64;
        let m = StepMetrics {
            step: done,
            epoch: done as f64 / per_epoch as f64,
            loss,
            grad_norm,
            learning_rate: lr,
            tokens_per_second: tokens as f64 / elapsed.max(1e-9),
            num_tokens,
            target_tokens: targets,
            step_time: elapsed,
        };
        last_loss = Some(loss);
        if done % cfg.train.logging_steps == 0 || done == stop {
            writeln!(
                metrics,
                "{}",
                serde_json::to_string(&m).expect("serialisable")
            )
            .map_err(io(&metrics_path))?;
        }
        on_event(&Event::Step(m));
        let eval_due = cfg.train.eval_steps.is_some_and(|e| done % e == 0) || done == total;
        if let Some(d) = &dropout {
            d.set(None);
        }
        if eval_due {
            if let Some(l) = eval_loss(&setup, cfg)? {
                last_eval = Some(l);
                let line = serde_json::json!({"step": done, "eval_loss": l, "epoch": done as f64 / per_epoch as f64});
                writeln!(metrics, "{line}").map_err(io(&metrics_path))?;
                on_event(&Event::Eval {
                    step: done,
                    loss: l,
                });
            }
        }
        let save_due =
            (cfg.train.save_steps > 0 && done % cfg.train.save_steps == 0) || done == stop;
        if save_due {
            let path = save(done, &opt)?;
            on_event(&Event::Saved { step: done, path });
        }
    }
    let finished = stop == total;
    let output = if finished {
        let dir = out_dir.join(params.dir_name());
        params.save(&dir, &base_model)?;
        dir
    } else {
        out_dir.join(format!("checkpoint-{stop}"))
    };
    Ok(Summary {
        steps: stop,
        finished,
        last_loss,
        last_eval_loss: last_eval,
        output,
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Drops metrics lines of steps after `step` (a resumed run writes them again).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<HashMap<String, serde_json::Value>>(l)
                .ok()
                .and_then(|m| m.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(io(path))
}
