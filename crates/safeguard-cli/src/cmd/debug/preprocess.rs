//! `safeguard debug preprocess` (issue #3). Not implemented yet: the command exists so that the
//! command surface is stable, and it fails with a clear message.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PreprocessArgs {}

pub fn run(_args: PreprocessArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`safeguard debug preprocess` is not implemented yet (issue #3)")
}
