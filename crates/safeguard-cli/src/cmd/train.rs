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
    /// Speed and peak memory of LoRA SFT steps on a named shape with random weights (the Rust
    /// half of scripts/bench/train_bench.sh); prints one JSON line and writes the shape's
    /// config.json for the PyTorch half.
    Bench(BenchArgs),
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
pub struct BenchArgs {
    /// A named shape with random weights: tiny, small or 7b.
    #[arg(long, default_value = "small", value_parser = ["tiny", "small", "7b"])]
    shape: String,
    /// Tokens per sequence (image included).
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Image grid height and width in patches (h·w/4 image tokens).
    #[arg(long, default_value_t = 16)]
    grid: usize,
    /// Target tokens at the end of each sequence.
    #[arg(long, default_value_t = 256)]
    target_tokens: usize,
    /// LoRA rank (alpha = 2·rank) on all seven projections.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Measured steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Keep the whole graph instead of recomputing each layer.
    #[arg(long)]
    no_recompute: bool,
    /// Weight dtype (f32 on CPU).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Frozen weights through candle's plain matmul (with their dead weight-sized gradients)
    /// instead of the frozen-weight op: measures what that op saves.
    #[arg(long)]
    plain_matmul: bool,
    /// Let the allocator return freed memory to the OS after its default delay, as before
    /// training commands kept it (measures what keeping it saves).
    #[arg(long)]
    purge_freed_memory: bool,
    /// Where to write the shape's config.json (for the PyTorch side).
    #[arg(long)]
    write_config: Option<PathBuf>,
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
        TrainCommand::Bench(args) => bench(args),
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

/// mimalloc's `mi_option_purge_delay` (not among `libmimalloc-sys`'s constants).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped for the rest of the process. A training step allocates and
/// frees gigabytes of activations; with mimalloc's default purge delay (1 s) the pages go back
/// to the OS between steps and every step faults them in again, zeroed: about a third of a
/// `small`-shape LoRA step (`safeguard train bench`: 19-22 s → 14.5-15.6 s per step, peak
/// memory +7 %; docs/TRAINING.md). The peak is what a run needs anyway.
fn keep_freed_memory() {
    // SAFETY: sets one allocator option (an integer store); valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

fn sft(args: SftArgs) -> anyhow::Result<ExitCode> {
    keep_freed_memory();
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

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if !args.purge_freed_memory {
        keep_freed_memory();
    }
    use safeguard_engine::shapes::{named_shape, named_shape_json, random_model};
    if let Some(path) = &args.write_config {
        let value = named_shape_json(&args.shape)?;
        std::fs::write(path, format!("{value:#}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut cfg = named_shape(&args.shape)?;
    // The tiny shape's vocabulary is smaller than Qwen's special ids: move them inside it.
    let vocab = cfg.text_config.vocab_size as u32;
    if cfg.image_token_id >= vocab {
        cfg.vision_start_token_id = vocab - 4;
        cfg.image_token_id = vocab - 3;
        cfg.vision_end_token_id = vocab - 2;
        cfg.video_token_id = vocab - 1;
    }
    let dtype = parse_dtype(&args.dtype).context("--dtype")?;
    let device = safeguard_engine::parse_device(&args.device).context("--device")?;
    let mut loaded = random_model(&cfg, &args.shape, dtype, &device)?;
    safeguard_model::layers::set_frozen_matmul(!args.plain_matmul);
    let result = safeguard_train::bench::bench_lora_steps(
        &mut loaded.model,
        &safeguard_train::bench::BenchOptions {
            seq_len: args.seq_len,
            grid: [1, args.grid, args.grid],
            target_tokens: args.target_tokens,
            rank: args.rank,
            batch: args.batch,
            steps: args.steps.max(1),
            recompute: !args.no_recompute,
        },
    )?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(ExitCode::SUCCESS)
}
