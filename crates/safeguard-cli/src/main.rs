//! `safeguard`: the command-line face of SafeGuard.
//!
//! The binary only parses flags and calls library functions; every subcommand lives in its own
//! module under [`cmd`]. `main` maps the outcome to the exit codes of ARCHITECTURE.md: 0 ok,
//! 1 an *unsafe* verdict under `--fail-on-unsafe`, 2 a usage or input error.

mod cmd;
mod config;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
