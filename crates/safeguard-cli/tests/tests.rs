//! Integration tests for the `safeguard` binary.

mod cli_common;
mod forward;
mod metrics_cmd;
mod policy_cmd;
mod preprocess;
