//! The error type of `shardcast-model`.

/// Errors raised while building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from Candle itself (tensor ops, variable loading).
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),

    /// A tensor had a shape the operation cannot accept.
    #[error("{op}: `{tensor}` has shape {actual:?}, expected {expected}")]
    Shape {
        /// The operation that checked the shape.
        op: &'static str,
        /// Which argument was wrong.
        tensor: &'static str,
        /// Its actual dimensions.
        actual: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },

    /// The fused kernels only run on `f32` tensors.
    #[error("{op}: `{tensor}` has dtype {dtype:?}, only f32 is supported")]
    DType {
        /// The operation that checked the dtype.
        op: &'static str,
        /// Which argument was wrong.
        tensor: &'static str,
        /// Its dtype.
        dtype: candle_core::DType,
    },

    /// The fused kernels only run on the CPU.
    #[error("{op}: device {device:?} is not supported, only the CPU is")]
    Device {
        /// The operation that checked the device.
        op: &'static str,
        /// The device the tensor lives on.
        device: candle_core::DeviceLocation,
    },

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

    /// A model directory could not be written or read.
    #[error("model artifact {path}: {reason}")]
    Artifact {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// Backward was asked for a forward pass that did not keep its activations.
    #[error("{op}: backward called without saved activations")]
    NotSaved {
        /// The operation.
        op: &'static str,
    },
}

/// Result with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
