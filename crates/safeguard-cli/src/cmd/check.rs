//! `safeguard check IMAGE... --policy ...`: the main job.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use safeguard_core::guard::{Guard, GuardRequest, Judgement};
use safeguard_core::{Assessment, Format, Policy};
use safeguard_lite::LiteGuard;
use safeguard_vision::DecodeLimits;

/// Image file extensions picked up when a directory is given.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The local VLM when a model is configured (--model / SAFEGUARD_MODEL), else lite.
    Auto,
    /// Qwen2.5-VL run natively (not available yet: issue #5).
    Local,
    /// An OpenAI-compatible endpoint (not available yet: issue #5).
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
    /// Model directory or Hugging Face id for the local backend.
    #[arg(long, env = "SAFEGUARD_MODEL")]
    pub model: Option<String>,
    /// Score (one forward pass) or reason (generate a rationale).
    #[arg(long, value_enum, default_value = "score", env = "SAFEGUARD_MODE")]
    pub mode: Mode,
    /// P(unsafe) at or above which an image is unsafe.
    #[arg(long, default_value_t = 0.5, env = "SAFEGUARD_THRESHOLD")]
    pub threshold: f64,
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
    let backend = match (args.backend, &args.model) {
        (Backend::Auto, None) => Backend::Lite,
        (Backend::Auto, Some(_)) => Backend::Local,
        (other, _) => other,
    };
    match backend {
        Backend::Lite => {
            eprintln!(
                "backend: lite (embedded open_nsfw; judges only the sexual/nudity rules of a policy; \
                 give --model for the Qwen2.5-VL guard)"
            );
            let limits = DecodeLimits {
                max_encoded_bytes: args.max_image_bytes,
                ..DecodeLimits::default()
            };
            Ok(Box::new(LiteGuard::new(limits)?))
        }
        Backend::Local => bail!(
            "the local Qwen2.5-VL backend is not available in `check` yet (issue #5); \
             run without --model/SAFEGUARD_MODEL to use the lite backend"
        ),
        Backend::Remote => bail!("the remote backend is not available yet (issue #5)"),
        Backend::Auto => unreachable!("auto is resolved above"),
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
    };
    let progress = progress_bar(paths.len());
    let mut outcomes = Vec::with_capacity(paths.len());
    for path in paths {
        let result = read_image(&path, args.max_image_bytes).and_then(|bytes| {
            let request = GuardRequest {
                image: &bytes,
                policy: &policy,
                format,
                threshold: args.threshold,
            };
            let mut results = guard.judge(std::slice::from_ref(&request));
            results
                .pop()
                .expect("one result per request")
                .map_err(|e| e.to_string())
        });
        let outcome = Outcome { path, result };
        if args.json {
            progress.suspend(|| print_json(&outcome, &policy));
        }
        outcomes.push(outcome);
        progress.inc(1);
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
