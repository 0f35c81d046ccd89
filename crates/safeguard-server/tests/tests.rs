//! Integration tests: the real server on an ephemeral loopback port, called over HTTP.

mod abuse;
mod api;
mod chat;
mod common;
mod parsing;
