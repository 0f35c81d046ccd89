//! Integration tests of `safeguard-engine` (one test binary, see STYLE.md).

mod common;
mod loading;
mod parity;
mod tokenizer;
