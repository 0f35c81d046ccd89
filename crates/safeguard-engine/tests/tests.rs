//! Integration tests of `safeguard-engine` (one test binary, see STYLE.md).

mod batch_forward;
mod batch_scheduler;
mod chat;
mod chat_template;
mod common;
mod decoding;
mod loading;
mod local_guard;
mod non_finite;
mod parity;
mod repetition_penalty;
mod templates;
mod tokenizer;
mod transformers_versions;
