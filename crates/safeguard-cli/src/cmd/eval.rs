//! `safeguard eval --dataset PATH --out RUN_DIR`: a benchmark through a guard, resumable.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use safeguard_eval::dataset::{self, DatasetFormat, LoadOptions, SplitChoice};
use safeguard_eval::runner::{self, RunConfig};

use super::backend::{self, BackendArgs, JudgeArgs};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The benchmark: SafeEditBench or UnsafeBench parquet (file or directory), UnsafeBench
    /// CSV, LlavaGuardBench JSON, or a JSONL manifest.
    #[arg(long)]
    dataset: PathBuf,
    /// Dataset format: auto, safeeditbench, unsafebench, llavaguard or jsonl.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Judge only the items of these policies (comma list of the dataset's policy names).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// UnsafeBench: the policy to judge under [default: openai, as the paper did].
    #[arg(long)]
    policy: Option<String>,
    /// The run directory: run.json, predictions.jsonl, summary.json, thumbs/.
    #[arg(long)]
    out: PathBuf,
    /// Continue a killed run in --out (skips the items already judged).
    #[arg(long)]
    resume: bool,
    /// The split to judge, for a directory whose files are named by split (hub shards
    /// `test-00000-of-00001.parquet`, LlavaGuard's `test.json`, `train_oversampled.json`, …)
    /// [default: test, when the files are named by split; otherwise all files].
    #[arg(long, env = "SAFEGUARD_SPLIT")]
    split: Option<String>,
    /// Where to find images whose path in the dataset does not exist (LlavaGuard's absolute
    /// paths; the images of the hub's LlavaGuard CSV): the path's longest suffix under DIR.
    #[arg(long, value_name = "DIR", env = "SAFEGUARD_IMAGE_ROOT")]
    image_root: Option<PathBuf>,
    /// Make the first bad dataset row an error instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Judge at most this many items.
    #[arg(long)]
    limit: Option<usize>,
    /// A name for the run in reports [default: the directory name].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    judging: JudgeArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    args.judging.validate()?;
    let path = args.dataset.clone();
    let format = match args.format.as_str() {
        "auto" => None,
        other => Some(other.parse::<DatasetFormat>()?),
    };
    let policy = args
        .policy
        .as_deref()
        .map(|spec| super::policy::load(spec, &[], &[]))
        .transpose()?;
    let mut data = dataset::load(
        &path,
        &LoadOptions {
            format,
            strict: args.strict,
            policy,
            limit: args.limit,
            split: match args.split.clone() {
                Some(name) => SplitChoice::Named(name),
                None => SplitChoice::Preferred("test".to_string()),
            },
            image_root: args.image_root.clone(),
        },
    )?;
    for bad in &data.skipped {
        eprintln!("skipped row {}: {}", bad.index, bad.reason);
    }
    if !args.policies.is_empty() {
        if let Some(unknown) = args
            .policies
            .iter()
            .find(|p| !data.policies.contains_key(*p))
        {
            let known: Vec<&str> = data.policies.keys().map(String::as_str).collect();
            bail!(
                "--policies: the dataset has no policy {unknown:?}; it has {}",
                known.join(", ")
            );
        }
        data.items.retain(|i| args.policies.contains(&i.policy));
        data.policies.retain(|name, _| args.policies.contains(name));
    }
    if data.items.is_empty() {
        bail!("{}: no item to judge", path.display());
    }
    eprintln!(
        "dataset: {} ({}{}, {} items, policies {}{})",
        data.name,
        data.format,
        data.split
            .as_deref()
            .map(|s| format!(", split {s}"))
            .unwrap_or_default(),
        data.items.len(),
        data.policies.keys().cloned().collect::<Vec<_>>().join(", "),
        if data.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} bad rows skipped", data.skipped.len())
        }
    );
    let built = backend::build(&args.backend)?;
    let cfg = RunConfig {
        out: args.out.clone(),
        resume: args.resume,
        batch_size: args.judging.batch_size,
        threshold: args.judging.threshold,
        format: args.judging.mode.format(),
        on_unparsable: args.judging.on_unparsable,
        // A run's numbers depend on the prompt layout: run.json records a non-default one.
        backend: if args.backend.template == safeguard_core::template::Template::SAFEGUARD {
            built.guard.name().to_string()
        } else {
            format!(
                "{} (template {})",
                built.guard.name(),
                args.backend.template
            )
        },
        model: built.model.clone(),
        dataset_path: path,
        name: args.name,
    };
    let bar = progress_bar();
    let outcome = runner::run(&data, built.guard.as_ref(), &cfg, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let s = &outcome.summary;
    if outcome.resumed > 0 {
        eprintln!(
            "resumed: {} items were already judged{}",
            outcome.resumed,
            if outcome.dropped_partial_line {
                " (a partial last line was dropped)"
            } else {
                ""
            }
        );
    }
    if !s.metrics.is_empty() {
        println!("policy      n      F1     acc    score");
        for (name, m) in &s.metrics.per_policy {
            println!(
                "{name:<8} {:>5}  {:.3}  {:.3}  {:.3}",
                m.n, m.f1, m.accuracy, m.score
            );
        }
    }
    println!("{}", s.score_line());
    println!("wrote {}", args.out.display());
    Ok(if s.errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} items  {per_sec}  eta {eta}")
            .expect("static template"),
    );
    bar
}
