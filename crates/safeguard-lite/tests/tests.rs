//! Integration tests for `safeguard-lite`.

mod evaluate;
mod parity;
