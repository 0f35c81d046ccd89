//! The error type of `safeguard-model`.

/// Everything that can go wrong while building or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor operation failed; this includes a weight missing from the checkpoint or of the
    /// wrong shape, which candle reports with the tensor's full name.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// `config.json` (or `adapter_config.json`) is not valid JSON or misses a required key.
    #[error("invalid model configuration: {0}")]
    ConfigJson(#[source] serde_json::Error),
    /// The configuration parsed but is inconsistent.
    #[error("invalid model configuration: `{field}` {reason}")]
    Config {
        /// The offending key.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The inputs of a call do not fit together (image tokens vs. grids, cache vs. prompt).
    #[error("invalid model input: {reason}")]
    Input {
        /// What does not match.
        reason: String,
    },
    /// A LoRA adapter cannot be applied to this model.
    #[error("LoRA adapter: {reason}")]
    Lora {
        /// What does not match (names the tensor or module).
        reason: String,
    },
}
