//! Integration tests for `safeguard-core`.

mod metrics;
mod policy;
mod prompt;
mod reward;
mod verdict;
