//! The remote backend: a [`safeguard_core::Guard`] that asks OpenAI-compatible
//! chat-completions endpoints (vLLM, SGLang, or any server speaking that API) to judge images.
//!
//! - [`RemoteConfig`]: endpoints, model name, API key, timeout, retries, backoff, token limit
//!   and concurrency; [`RemoteConfig::new`] gives defaults.
//! - [`RemoteGuard`]: validates the configuration and implements
//!   [`Guard::judge`](safeguard_core::Guard::judge). Each request becomes one chat completion
//!   (a system message, then a user message of policy text, image as a `data:` URL, question
//!   and instruction), with the texts cut from [`safeguard_core::prompt::render`] so the remote
//!   and local backends ask the same thing ([`wire`]).
//! - Score mode ([`Format::Verdict`](safeguard_core::Format::Verdict)) asks for one token with
//!   its top 20 logprobs and reads P(unsafe) from them ([`score`]); a structured policy also
//!   has each prohibited rule asked on its own ([`safeguard_core::prompt::rule_question`]),
//!   all calls of a batch running `concurrency` at a time on scoped threads. Reasoning and
//!   JSON modes generate text that [`safeguard_core::verdict::parse`] reads; output it cannot
//!   read is an [`Error::Unparsable`](safeguard_core::Error::Unparsable), never a silent
//!   default.
//! - The client ([`ureq`], blocking) spreads calls round-robin over the endpoints, puts an
//!   endpoint that failed recently behind the healthy ones, and retries connection errors,
//!   timeouts, 408, 429 and 5xx on the next endpoint with exponential backoff and jitter
//!   (honouring `Retry-After`). Other 4xx fail at once with the status and the server's
//!   message ([`Error::Remote`](safeguard_core::Error::Remote)).
//!
//! The image's MIME type is read from its first bytes ([`sniff_mime`]); bytes that are not
//! JPEG, PNG, WebP, GIF or BMP are refused before anything is sent.

mod client;
mod config;
mod guard;
mod mime;
pub mod score;
pub mod wire;

pub use client::{parse_endpoint, HEALTH_PENALTY};
pub use config::{RemoteConfig, MAX_BACKOFF, MAX_RETRY_AFTER};
pub use guard::RemoteGuard;
pub use mime::sniff_mime;

/// Backend name shown in outputs (`judgement.backend`).
pub const NAME: &str = "remote";
