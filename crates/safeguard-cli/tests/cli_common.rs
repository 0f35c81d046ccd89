//! Helpers shared by the CLI tests: run the real `safeguard` binary.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `safeguard ARGS` and returns its output.
pub fn safeguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .output()
        .expect("run the safeguard binary")
}

/// Stdout as text, asserting exit code 0.
pub fn ok(args: &[&str]) -> String {
    let out = safeguard(args);
    assert!(
        out.status.success(),
        "safeguard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Stderr as text, asserting exit code 2 (usage or input error).
pub fn fails(args: &[&str]) -> String {
    let out = safeguard(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "safeguard {args:?}: stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// The committed scikit-learn metrics fixtures of safeguard-core.
pub fn metrics_fixtures() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../safeguard-core/tests/fixtures/metrics"
    ))
}
