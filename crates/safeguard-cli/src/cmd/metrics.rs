use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {}

pub fn run(_args: MetricsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("work in progress")
}
