//! `safeguard train …`: Stage 1 SFT with LoRA, presets, and merging an adapter into its base.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use safeguard_engine::hub::{resolve_model, HubOptions};
use safeguard_engine::weights::parse_dtype;
use safeguard_train::config::{SftConfig, PRESETS};
use safeguard_train::merge::merge_adapter;
use safeguard_train::sft::{run_sft, Event, RunOptions};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning (Stage 1: image → recaption) of a LoRA adapter, from a TOML
    /// config; resumable (see docs/TRAINING.md).
    Sft(SftArgs),
    /// Add a LoRA adapter into its base model and write the merged checkpoint.
    Merge(MergeArgs),
    /// List the built-in presets, or print one (a starting point for --config).
    Preset {
        /// A preset to print as TOML.
        name: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SftArgs {
    /// The training config (TOML; `preset = "NAME"` starts from a built-in preset).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest checkpoint in train.output_dir.
    #[arg(long)]
    resume: bool,
    /// Stop after this optimizer step (with a checkpoint); the schedule spans the whole run.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Override train.output_dir.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The base checkpoint directory or Hugging Face id.
    #[arg(long, env = "SAFEGUARD_MODEL")]
    model: String,
    /// The PEFT adapter directory.
    #[arg(long)]
    lora: PathBuf,
    /// Output directory (created; must not hold a checkpoint).
    #[arg(long)]
    out: PathBuf,
    /// Store every floating tensor in this dtype (f32, bf16, f16) [default: as in the base].
    #[arg(long)]
    dtype: Option<String>,
}

pub fn run(cmd: TrainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TrainCommand::Sft(args) => sft(args),
        TrainCommand::Merge(args) => merge(args),
        TrainCommand::Preset { name: None } => {
            for (name, text) in PRESETS {
                let about = text.lines().next().unwrap_or("").trim_start_matches("# ");
                println!("{name:10} {about}");
            }
            Ok(ExitCode::SUCCESS)
        }
        TrainCommand::Preset { name: Some(name) } => {
            let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).with_context(|| {
                format!(
                    "no preset `{name}` (known: {})",
                    PRESETS.map(|p| p.0).join(", ")
                )
            })?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn sft(args: SftArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = SftConfig::from_file(&args.config)?;
    if let Some(dir) = args.output_dir {
        cfg.train.output_dir = dir;
    }
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  elapsed {elapsed}  eta {eta}",
        )
        .expect("static template"),
    );
    let interactive = !bar.is_hidden();
    let mut on_event = |e: &Event| match e {
        Event::Started {
            start_step,
            total_steps,
            train_examples,
            eval_examples,
            skipped,
            parameters,
        } => {
            bar.set_length(*total_steps);
            bar.set_position(*start_step);
            if *skipped > 0 {
                eprintln!("warning: {skipped} examples longer than data.max_length were skipped");
            }
            eprintln!(
                "training {parameters} LoRA values on {train_examples} examples ({eval_examples} held out), steps {start_step}..{total_steps}"
            );
        }
        Event::Step(m) => {
            bar.set_position(m.step);
            let msg = format!(
                "loss {:.4}  grad {:.3}  lr {:.2e}  {:.0} tok/s",
                m.loss, m.grad_norm, m.learning_rate, m.tokens_per_second
            );
            if interactive {
                bar.set_message(msg);
            } else {
                eprintln!("step {}: {msg}", m.step);
            }
        }
        Event::Eval { step, loss } => bar.println(format!("step {step}: eval_loss {loss:.4}")),
        Event::Saved { path, .. } => bar.println(format!("saved {}", path.display())),
    };
    let summary = run_sft(
        &cfg,
        &RunOptions {
            resume: args.resume,
            stop_at: args.stop_at,
        },
        &mut on_event,
    )?;
    bar.finish_and_clear();
    if summary.finished {
        println!(
            "done: {} steps, final loss {}, eval loss {}; adapter in {}",
            summary.steps,
            fmt(summary.last_loss),
            fmt(summary.last_eval_loss),
            summary.output.display()
        );
    } else {
        println!(
            "stopped at step {}; continue with --resume (checkpoint {})",
            summary.steps,
            summary.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let model = resolve_model(&args.model, &HubOptions::default())?;
    let dtype = args
        .dtype
        .as_deref()
        .map(parse_dtype)
        .transpose()
        .context("--dtype")?;
    let s = merge_adapter(&model, &args.lora, &args.out, dtype)?;
    println!(
        "merged {} of {} tensors into {}; copied {}",
        s.merged,
        s.tensors,
        s.weights.display(),
        s.copied.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
