//! `safeguard check IMAGE... --policy ...`: the main job.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use safeguard_core::guard::{GuardRequest, Judgement};
use safeguard_core::{Assessment, Policy};

use super::backend::{self, BackendArgs, JudgeArgs};

/// Image file extensions picked up when a directory is given.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

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
    /// Print one JSON object per image instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when any image is judged unsafe.
    #[arg(long)]
    pub fail_on_unsafe: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub judging: JudgeArgs,
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
    args.judging.validate()?;
    let policy = super::policy::load(&args.policy, &args.allow, &args.prohibit)?;
    let paths = expand(&args.images)?;
    let guard = backend::build(&args.backend)?.guard;
    let judging = &args.judging;
    let format = judging.mode.format();
    let progress = progress_bar(paths.len());
    let mut outcomes = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(judging.batch_size) {
        let read: Vec<Result<Vec<u8>, String>> = chunk
            .iter()
            .map(|p| read_image(p, args.backend.max_image_bytes))
            .collect();
        let requests: Vec<GuardRequest<'_>> = read
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|bytes| GuardRequest {
                image: bytes,
                policy: &policy,
                format,
                threshold: judging.threshold,
            })
            .collect();
        let mut judged =
            safeguard_core::guard::judge_checked(guard.as_ref(), &requests).into_iter();
        for (path, bytes) in chunk.iter().zip(read) {
            let result = bytes.and_then(|_| {
                backend::fallback(
                    judged.next().expect("one result per request"),
                    judging.on_unparsable,
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
