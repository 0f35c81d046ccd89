//! `safeguard debug …`: low-level tools that dump intermediate arrays for parity checks against
//! the Python reference implementation.

mod forward;
mod preprocess;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Decode and preprocess one image exactly as the model sees it; writes
    /// `pixel_values.npy` and `grid_thw.json`.
    Preprocess(preprocess::PreprocessArgs),
    /// Run one forward pass of a Qwen2.5-VL checkpoint; writes `logits.npy` and
    /// `image_embeds.npy`.
    Forward(forward::ForwardArgs),
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::Preprocess(args) => preprocess::run(args),
        DebugCommand::Forward(args) => forward::run(args),
    }
}
