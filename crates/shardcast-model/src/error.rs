//! The error type of `shardcast-model`.

/// Errors raised while building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from Candle itself (tensor ops, variable loading).
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),

    /// An error of a recurrent layer (shapes, dtypes or devices it cannot
    /// take, a bad layer configuration).
    #[error(transparent)]
    Nn(#[from] shardcast_nn::Error),

    /// A configuration value is out of range.
    #[error("invalid configuration: {field} = {value} ({reason})")]
    Config {
        /// The field of the config struct.
        field: &'static str,
        /// The value given.
        value: usize,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A value or combination of inputs the model cannot accept.
    #[error("{0}")]
    Invalid(String),

    /// A training configuration file that cannot be read or is malformed.
    #[error("{path}: {reason}")]
    ConfigFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// A model directory could not be written or read.
    #[error("model artifact {path}: {reason}")]
    Artifact {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// A forecast that breaks the core's rules (values not finite,
    /// quantiles crossing, a context it cannot use).
    #[error(transparent)]
    Forecast(#[from] shardcast_core::Error),
}

/// Result with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
