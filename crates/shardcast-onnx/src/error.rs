//! The error type of `shardcast-onnx`.

/// Errors raised while exporting, loading or running an ONNX graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An ONNX file could not be written, read, checked or fed.
    #[error("ONNX model {path}: {reason}")]
    Onnx {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong, naming the input, node, tensor or field.
        reason: String,
    },

    /// A node of a loaded ONNX graph failed while running.
    #[error("ONNX model {path}: node `{node}` ({op}) failed")]
    OnnxNode {
        /// The file.
        path: std::path::PathBuf,
        /// The node's name.
        node: String,
        /// Its operator.
        op: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },

    /// A value or combination of inputs the graph cannot accept.
    #[error("{0}")]
    Invalid(String),

    /// The model refused a request (a window it cannot forecast, a missing
    /// weight).
    #[error(transparent)]
    Model(#[from] shardcast_model::Error),

    /// A forecast that breaks the core's rules (values not finite,
    /// quantiles crossing).
    #[error(transparent)]
    Forecast(#[from] shardcast_core::Error),

    /// An error from Candle itself (building or reading tensors).
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),
}

/// Result with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
