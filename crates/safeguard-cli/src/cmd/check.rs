//! `safeguard check IMAGE... --policy ...`: the main job.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use safeguard_core::guard::{Guard, GuardRequest, Judgement};
use safeguard_core::verdict::OnUnparsable;
use safeguard_core::{Assessment, Error, Format, Policy};
use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::weights::parse_dtype;
use safeguard_engine::{parse_device, LoadOptions, LocalGuard, LocalGuardOptions};
use safeguard_lite::LiteGuard;
use safeguard_remote::{RemoteConfig, RemoteGuard};
use safeguard_vision::DecodeLimits;

/// Image file extensions picked up when a directory is given.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The local VLM when a model is configured (--model, SAFEGUARD_MODEL or the config
    /// file), else the remote backend when endpoints are configured, else lite.
    Auto,
    /// Qwen2.5-VL run natively (needs --model).
    Local,
    /// OpenAI-compatible chat-completions endpoints (vLLM, SGLang, `safeguard serve`).
    Remote,
    /// The embedded open_nsfw classifier: judges sexual/nudity rules only.
    Lite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One forward pass; P(unsafe) from the answer-token logits.
    Score,
    /// Generate `<think>…</think><answer>…</answer>` and parse it.
    Reason,
    /// Generate a LlavaGuard-style JSON answer (rating, category, rationale) and parse it.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Images, directories (searched recursively) or glob patterns.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// A preset name, a .md/.toml/.txt policy file, or policy text.
    #[arg(long, short, default_value = "L3", env = "SAFEGUARD_POLICY")]
    pub policy: String,
    /// Mark a rule of the policy as allowed (repeatable).
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,
    /// Mark a rule of the policy as prohibited (repeatable).
    #[arg(long = "prohibit", value_name = "RULE")]
    pub prohibit: Vec<String>,
    /// Which guard to run.
    #[arg(long, value_enum, default_value = "auto", env = "SAFEGUARD_BACKEND")]
    pub backend: Backend,
    /// Model directory or Hugging Face id for the local backend [default: `model` of the
    /// config file].
    #[arg(long, env = "SAFEGUARD_MODEL")]
    pub model: Option<String>,
    /// Where the local model runs: cpu, cuda or cuda:N [default: the config file's, else cpu].
    #[arg(long, env = "SAFEGUARD_DEVICE")]
    pub device: Option<String>,
    /// Weight dtype of the local model: f32, bf16 or f16 [default: the config file's, else f32].
    #[arg(long, env = "SAFEGUARD_DTYPE")]
    pub dtype: Option<String>,
    /// A PEFT LoRA adapter directory merged into the local model.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Smallest image area after resizing, in pixels [default: the model's].
    #[arg(long, env = "SAFEGUARD_MIN_PIXELS")]
    pub min_pixels: Option<usize>,
    /// Largest image area after resizing, in pixels [default: the model's].
    #[arg(long, env = "SAFEGUARD_MAX_PIXELS")]
    pub max_pixels: Option<usize>,
    /// Memory for cached policy prefixes (keys/values), in MiB; 0 turns the cache off.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mb: usize,
    /// Do not score each prohibited rule separately (score mode; faster, no rules hit).
    #[arg(long)]
    pub no_rules: bool,
    /// Token budget of reason and json modes.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Images judged per call to the backend.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Base URL of an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (repeatable;
    /// requests are balanced across them) [default: `endpoints` of the config file].
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// The `model` name sent to the endpoints [default: the config file's].
    #[arg(long, env = "SAFEGUARD_REMOTE_MODEL")]
    pub remote_model: Option<String>,
    /// Per-attempt timeout of remote requests, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Score (one forward pass) or reason (generate a rationale).
    #[arg(long, value_enum, default_value = "score", env = "SAFEGUARD_MODE")]
    pub mode: Mode,
    /// P(unsafe) at or above which an image is unsafe.
    #[arg(long, default_value_t = 0.5, env = "SAFEGUARD_THRESHOLD")]
    pub threshold: f64,
    /// What an output without a verdict (reason/json modes) counts as: error (the image is
    /// reported as failed), safe or unsafe (the judgement says it was a fallback).
    #[arg(long, default_value = "error", value_parser = parse_on_unparsable)]
    pub on_unparsable: OnUnparsable,
    /// Print one JSON object per image instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when any image is judged unsafe.
    #[arg(long)]
    pub fail_on_unsafe: bool,
    /// Largest accepted image file, in bytes.
    #[arg(long, default_value_t = 64 << 20, env = "SAFEGUARD_MAX_IMAGE_BYTES")]
    pub max_image_bytes: usize,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Expands the arguments into image paths: files as given, directories recursively (image
/// extensions only), and glob patterns.
pub fn expand(inputs: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if path.is_dir() {
            walk(path, &mut out)?;
        } else if path.exists() {
            out.push(path.to_path_buf());
        } else if input.contains(['*', '?', '[']) {
            let matches: Vec<PathBuf> = glob::glob(input)
                .with_context(|| format!("bad glob pattern {input:?}"))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if matches.is_empty() {
                bail!("no file matches {input:?}");
            }
            out.extend(matches);
        } else {
            bail!("no such file or directory: {input}");
        }
    }
    if out.is_empty() {
        bail!("no images found in {}", inputs.join(", "));
    }
    Ok(out)
}

fn pick_backend(args: &CheckArgs) -> anyhow::Result<Box<dyn Guard>> {
    let (config, config_path) = crate::config::load()?;
    let model = args.model.clone().or(config.model.clone());
    let endpoints = if args.endpoints.is_empty() {
        config.endpoints.clone()
    } else {
        args.endpoints.clone()
    };
    let backend = match args.backend {
        Backend::Auto if model.is_some() => Backend::Local,
        Backend::Auto if !endpoints.is_empty() => Backend::Remote,
        Backend::Auto => Backend::Lite,
        other => other,
    };
    let from_config = |what: &str| match &config_path {
        Some(p) => format!(" ({what} from {})", p.display()),
        None => String::new(),
    };
    match backend {
        Backend::Lite => {
            eprintln!(
                "backend: lite (embedded open_nsfw; judges only the sexual/nudity rules of a policy; \
                 give --model for the Qwen2.5-VL guard)"
            );
            Ok(Box::new(LiteGuard::new(decode_limits(args))?))
        }
        Backend::Local => {
            let Some(model) = model else {
                bail!("--backend local needs a model: --model DIR|HF_ID, SAFEGUARD_MODEL, or `model` in the config file");
            };
            let device = args
                .device
                .clone()
                .or(config.device.clone())
                .unwrap_or("cpu".into());
            let dtype = args
                .dtype
                .clone()
                .or(config.dtype.clone())
                .unwrap_or("f32".into());
            eprintln!(
                "backend: local (Qwen2.5-VL {model}, {dtype} on {device}){}",
                if args.model.is_none() {
                    from_config("model")
                } else {
                    String::new()
                }
            );
            let dir = resolve_model(&model, &HubOptions::default())?;
            let opts = LocalGuardOptions {
                load: LoadOptions {
                    dtype: parse_dtype(&dtype).context("--dtype")?,
                    device: parse_device(&device).context("--device")?,
                    lora: args.lora.clone(),
                    ..LoadOptions::default()
                },
                limits: decode_limits(args),
                min_pixels: args.min_pixels,
                max_pixels: args.max_pixels,
                prefix_cache_bytes: args.prefix_cache_mb << 20,
                rules: !args.no_rules,
                max_new_tokens: args.max_new_tokens,
            };
            let guard = LocalGuard::load(&dir, opts)
                .with_context(|| format!("cannot load the model in {}", dir.display()))?;
            Ok(Box::new(guard))
        }
        Backend::Remote => {
            if endpoints.is_empty() {
                bail!("--backend remote needs --endpoint URL (or `endpoints` in the config file)");
            }
            let remote_model = args
                .remote_model
                .clone()
                .or(config.remote_model.clone())
                .or(model)
                .context(
                    "--backend remote needs --remote-model NAME (the model the endpoints serve)",
                )?;
            if !(args.timeout > 0.0 && args.timeout.is_finite()) {
                bail!("--timeout must be a positive number of seconds");
            }
            let mut cfg = RemoteConfig::new(endpoints.clone(), remote_model.clone());
            cfg.api_key = std::env::var("SAFEGUARD_API_KEY")
                .ok()
                .filter(|k| !k.is_empty());
            cfg.timeout = std::time::Duration::from_secs_f64(args.timeout);
            cfg.max_tokens_reason = args.max_new_tokens as u32;
            eprintln!(
                "backend: remote ({remote_model} at {})",
                endpoints.join(", ")
            );
            Ok(Box::new(RemoteGuard::new(cfg)?))
        }
        Backend::Auto => unreachable!("auto is resolved above"),
    }
}

fn parse_on_unparsable(s: &str) -> Result<OnUnparsable, String> {
    s.parse().map_err(|e: safeguard_core::Error| e.to_string())
}

/// Applies `--on-unparsable` to a backend's result.
fn fallback(result: Result<Judgement, Error>, on: OnUnparsable) -> Result<Judgement, String> {
    match result {
        Ok(j) => Ok(j),
        Err(Error::Unparsable {
            backend,
            reason,
            output,
        }) if on != OnUnparsable::Error => {
            let verdict = if on == OnUnparsable::Safe {
                Assessment::Safe
            } else {
                Assessment::Unsafe
            };
            Ok(Judgement {
                verdict,
                p_unsafe: None,
                rules_hit: Vec::new(),
                rules: Vec::new(),
                rationale: None,
                raw_output: Some(output),
                note: Some(format!(
                    "no verdict in the model output ({reason}); counted as {verdict} by --on-unparsable"
                )),
                backend,
                latency_ms: 0.0,
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

fn decode_limits(args: &CheckArgs) -> DecodeLimits {
    DecodeLimits {
        max_encoded_bytes: args.max_image_bytes,
        ..DecodeLimits::default()
    }
}

/// One image's outcome: a judgement or the error that prevented one.
struct Outcome {
    path: PathBuf,
    result: Result<Judgement, String>,
}

fn read_image(path: &Path, max_bytes: usize) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > max_bytes as u64 {
        return Err(format!(
            "file is {size} bytes; at most {max_bytes} are accepted (--max-image-bytes)"
        ));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.threshold) {
        bail!("--threshold must be in [0, 1] (got {})", args.threshold);
    }
    let policy = super::policy::load(&args.policy, &args.allow, &args.prohibit)?;
    let paths = expand(&args.images)?;
    let guard = pick_backend(&args)?;
    let format = match args.mode {
        Mode::Score => Format::Verdict,
        Mode::Reason => Format::Reasoning,
        Mode::Json => Format::Json,
    };
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let progress = progress_bar(paths.len());
    let mut outcomes = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(args.batch_size) {
        let read: Vec<Result<Vec<u8>, String>> = chunk
            .iter()
            .map(|p| read_image(p, args.max_image_bytes))
            .collect();
        let requests: Vec<GuardRequest<'_>> = read
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|bytes| GuardRequest {
                image: bytes,
                policy: &policy,
                format,
                threshold: args.threshold,
            })
            .collect();
        let mut judged = guard.judge(&requests).into_iter();
        for (path, bytes) in chunk.iter().zip(read) {
            let result = bytes.and_then(|_| {
                fallback(
                    judged.next().expect("one result per request"),
                    args.on_unparsable,
                )
            });
            let outcome = Outcome {
                path: path.clone(),
                result,
            };
            if args.json {
                progress.suspend(|| print_json(&outcome, &policy));
            }
            outcomes.push(outcome);
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    if !args.json {
        print_table(&outcomes);
    }
    let failed = outcomes.iter().any(|o| o.result.is_err());
    let any_unsafe = outcomes
        .iter()
        .any(|o| matches!(&o.result, Ok(j) if j.verdict == Assessment::Unsafe));
    Ok(if failed {
        ExitCode::from(2)
    } else if any_unsafe && args.fail_on_unsafe {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn progress_bar(len: usize) -> ProgressBar {
    if len < 8 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
            .expect("static template"),
    );
    bar
}

fn print_json(outcome: &Outcome, policy: &Policy) {
    let image = outcome.path.display().to_string();
    let value = match &outcome.result {
        Ok(j) => {
            let mut v = serde_json::to_value(j).expect("judgement serialises");
            v["image"] = image.into();
            v["policy"] = policy.name.clone().into();
            v["policy_hash"] = policy.hash().into();
            v
        }
        Err(e) => serde_json::json!({"image": image, "error": e}),
    };
    println!("{value}");
}

fn print_table(outcomes: &[Outcome]) {
    let width = outcomes
        .iter()
        .map(|o| o.path.display().to_string().chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:width$}  {:<10}  {:>8}  rules hit",
        "image", "verdict", "p_unsafe"
    );
    let mut notes = BTreeSet::new();
    for outcome in outcomes {
        let name = outcome.path.display().to_string();
        match &outcome.result {
            Ok(j) => {
                let p = j.p_unsafe.map_or("-".to_string(), |p| format!("{p:.3}"));
                let hit = if j.rules_hit.is_empty() {
                    "-".to_string()
                } else {
                    j.rules_hit.join(", ")
                };
                println!(
                    "{name:width$}  {:<10}  {p:>8}  {hit}",
                    j.verdict.to_string()
                );
                if let Some(note) = &j.note {
                    notes.insert(note.clone());
                }
            }
            Err(e) => println!("{name:width$}  {:<10}  {:>8}  {e}", "error", "-"),
        }
    }
    for note in notes {
        println!("note: {note}");
    }
}
