//! `safeguard debug forward` (issue #4). Not implemented yet: the command exists so that the
//! command surface is stable, and it fails with a clear message.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {}

pub fn run(_args: ForwardArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`safeguard debug forward` is not implemented yet (issue #4)")
}
