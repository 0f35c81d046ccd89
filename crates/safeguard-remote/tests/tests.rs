//! Integration tests for `safeguard-remote`: real HTTP against chat-completions servers on
//! loopback (`common::MockServer`).

mod common;

mod balancing;
mod requests;
mod retries;
mod rules;
mod scoring;
