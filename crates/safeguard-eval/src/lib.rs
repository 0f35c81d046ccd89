//! SafeGuard evaluation harness.
//!
//! - [`dataset`]: benchmark loaders — SafeEditBench and UnsafeBench parquet, UnsafeBench CSV,
//!   LlavaGuard JSON and our JSONL manifest — into one [`dataset::Dataset`] of
//!   [`dataset::Item`]s (image, policy name, true verdict, category, pair, source) and the
//!   [`safeguard_core::Policy`]s they name, with bad rows skipped and reported
//!   ([`dataset::BadRow`]) or fatal under `strict`.
//! - [`runner`]: a dataset through a `Guard` into a resumable run directory (run.json,
//!   predictions.jsonl, summary.json, thumbnails of the errors).
//! - [`demo`]: writes a small generated benchmark in SafeEditBench's parquet layout, so the
//!   whole evaluation path runs offline.
//!
//! Errors are [`EvalError`]s; each names the file, and for a row its 0-based index and field.

pub mod dataset;
pub mod demo;
mod error;
pub mod report;
pub mod runner;
pub use error::EvalError;
