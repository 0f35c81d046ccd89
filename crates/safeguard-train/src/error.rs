//! Errors of the training code.

use std::path::PathBuf;

/// Anything that stops a training command.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A bad setting (training config, LoRA options, command-line values).
    #[error("{reason}")]
    Config {
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A bad training example.
    #[error("{}:{line}: {reason}", path.display())]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A run directory or checkpoint that cannot be resumed.
    #[error("cannot resume from {}: {reason}", path.display())]
    Resume {
        /// The run directory or checkpoint.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A loss or gradient that is NaN or infinite: training stops rather than write it.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// `loss`, `grad_norm`, …
        what: String,
        /// Optimizer step.
        step: u64,
    },
    /// From the model code.
    #[error(transparent)]
    Model(#[from] safeguard_model::ModelError),
    /// From the engine (loading, tokenizer).
    #[error(transparent)]
    Engine(#[from] safeguard_engine::EngineError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A malformed adapter or checkpoint file.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
