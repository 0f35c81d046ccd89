//! The one error type of `safeguard-lite`.

/// What can go wrong in the lite backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiteError {
    /// The embedded ONNX model could not be loaded or run.
    #[error("open_nsfw model: {0}")]
    Model(String),
    /// Resizing or re-encoding the image failed.
    #[error("preprocessing: {0}")]
    Preprocess(String),
    /// The image could not be decoded within the limits.
    #[error(transparent)]
    Image(#[from] safeguard_vision::VisionError),
}
