//! Integration tests of `safeguard-vision` (one test binary; see STYLE.md).

mod common;
mod config;
mod corrupt_jpeg;
mod decode;
mod mutated;
mod parity;
mod pillow_resize;
mod sizes;
