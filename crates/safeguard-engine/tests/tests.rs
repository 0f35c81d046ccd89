//! Integration tests of `safeguard-engine` (one test binary, see STYLE.md).

mod common;
mod decoding;
mod loading;
mod parity;
mod tokenizer;
