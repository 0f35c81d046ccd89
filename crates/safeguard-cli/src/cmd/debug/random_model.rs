//! `safeguard debug random-model`: a checkpoint directory of a named shape with random weights.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use safeguard_engine::shapes::save_random_model;
use safeguard_engine::weights::parse_dtype;

#[derive(Debug, Args)]
pub struct RandomModelArgs {
    /// tiny, small or 7b (see `safeguard bench --shape`).
    #[arg(long, value_parser = ["tiny", "small", "7b"])]
    pub shape: String,
    /// The tokenizer.json to ship with it (its special ids and vocabulary size are used).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Weight dtype on disk: f32, bf16 or f16.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Output directory (created; existing files are overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: RandomModelArgs) -> anyhow::Result<ExitCode> {
    let dtype = parse_dtype(&args.dtype).context("--dtype")?;
    save_random_model(&args.shape, &args.tokenizer, dtype, &args.out).with_context(|| {
        format!(
            "cannot write a random {} model to {}",
            args.shape,
            args.out.display()
        )
    })?;
    eprintln!(
        "wrote a random-weight {} checkpoint to {}",
        args.shape,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
