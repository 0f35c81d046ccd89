//! The error type of `safeguard-engine`.

use std::path::PathBuf;

/// Everything that can go wrong while turning files into a running model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Reading a file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file that must be present is not.
    #[error("{} not found: {hint}", path.display())]
    MissingFile {
        /// Where it was looked for.
        path: PathBuf,
        /// What would fix it.
        hint: String,
    },
    /// A JSON file (`config.json`, an index, `adapter_config.json`) could not be parsed.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `model.safetensors.index.json` is inconsistent with the shards.
    #[error("{}: {reason}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Building or running the model failed (missing or mis-shaped weights are named here).
    #[error(transparent)]
    Model(#[from] safeguard_model::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// `tokenizer.json` could not be loaded, or encoding/decoding failed.
    #[error("tokenizer {}: {source}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The cause reported by the `tokenizers` crate.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The Hugging Face Hub could not provide a model.
    #[error("cannot get `{model_id}` from the Hugging Face Hub: {reason}")]
    Hub {
        /// The repository id, such as `Qwen/Qwen2.5-VL-7B-Instruct`.
        model_id: String,
        /// What happened and where to put the files instead.
        reason: String,
    },
    /// The dynamic batcher refused or lost a job (queue full, shut down, a failed batch).
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::SchedulerError),
    /// The model produced a NaN or infinite logit (overflow in low precision, a corrupt
    /// weight). Never turned into a token or a verdict.
    #[error("{what} is not finite ({value})")]
    NonFinite {
        /// Which number, e.g. `logit of token 38157`.
        what: String,
        /// The number as printed.
        value: String,
    },
    /// A caller-supplied value is invalid (dtype name, sampling parameter, prompt).
    #[error("invalid input: {reason}")]
    Input {
        /// What is wrong and what would fix it.
        reason: String,
    },
}
