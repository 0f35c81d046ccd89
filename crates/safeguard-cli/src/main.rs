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
            eprintln!("error: {}", error_chain(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes joined by `: `, each said once: many errors print their cause in
/// their own message too (`line 1: … expected a string` wrapping `expected a string`), and
/// anyhow's `{:#}` would repeat it. A cause whose text the chain already holds is left out.
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fmt;

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("expected a string")
        }
    }
    impl std::error::Error for Leaf {}

    /// An error that prints its cause and also returns it as its source.
    #[derive(Debug)]
    struct Wrapper(Leaf);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "line 1: field \"pred\": {}", self.0)
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let err = anyhow::Error::new(Wrapper(Leaf)).context("reading predictions.jsonl");
        assert!(format!("{err:#}").matches("expected a string").count() == 2);
        assert_eq!(
            super::error_chain(&err),
            "reading predictions.jsonl: line 1: field \"pred\": expected a string"
        );
        // Causes that add something are all kept.
        let err = anyhow::anyhow!("disk full").context("writing run.json");
        assert_eq!(super::error_chain(&err), "writing run.json: disk full");
    }
}
