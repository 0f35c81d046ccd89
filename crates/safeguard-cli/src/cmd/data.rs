//! `safeguard data …`: dataset tools. Today: the generated demo benchmark.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Write the generated demo benchmark: synthetic images under policies L1–L5, in
    /// SafeEditBench's parquet layout, so `safeguard eval` runs offline.
    Demo {
        /// Directory to write the parquet file into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the generated images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

pub fn run(cmd: DataCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DataCommand::Demo { out, seed } => {
            let path = safeguard_eval::demo::write_demo(&out, seed)?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
