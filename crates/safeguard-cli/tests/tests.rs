//! Integration tests for the `safeguard` binary.

mod bench_cmd;
mod big_photo;
mod check_cmd;
mod cli_common;
mod eval_cmd;
mod forward;
mod metrics_cmd;
mod policy_cmd;
mod preprocess;
mod report_cmd;
mod serve_cmd;
mod train_cmd;
