//! Subcommands. Each module owns its clap arguments and a `run` function.

mod backend;
mod bench;
mod check;
mod data;
mod debug;
mod eval;
mod metrics;
mod policy;
mod report;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// SafeGuard: a policy-adaptive image guardrail.
#[derive(Debug, Parser)]
#[command(name = "safeguard", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check images against a policy: safe, unsafe or unassessed, with the rules hit.
    Check(check::CheckArgs),
    /// List, show and render safety policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run a benchmark (SafeEditBench, UnsafeBench, LlavaGuardBench, JSONL) through a guard
    /// into a resumable run directory with predictions and metrics.
    Eval(eval::EvalArgs),
    /// Dataset tools: the generated demo benchmark.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Compute benchmark metrics from a predictions file (JSONL or CSV).
    Metrics(metrics::MetricsArgs),
    /// Evaluation runs side by side: one self-contained HTML report (and Markdown tables).
    Report(report::ReportArgs),
    /// Throughput and latency of the local guard (score/reason mode, batch sizes, prefix cache).
    Bench(bench::BenchArgs),
    /// Serve the moderation API over HTTP (/v1/moderate, OpenAI-compatible /v1/moderations).
    Serve(serve::ServeArgs),
    /// Training: Stage 1 SFT with LoRA, presets, merging an adapter into its base.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Low-level tools for checking parity with the reference implementation.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Data(cmd) => data::run(cmd),
        Command::Metrics(args) => metrics::run(args),
        Command::Report(args) => report::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Train(cmd) => train::run(cmd),
        Command::Debug(cmd) => debug::run(cmd),
    }
}
