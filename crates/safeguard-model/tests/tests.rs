//! Integration tests of `safeguard-model` (one test binary, see STYLE.md). Parity against
//! transformers lives in `safeguard-engine`'s tests, which load these crates' fixtures from disk.

mod config;
mod shapes;
