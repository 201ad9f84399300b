use thiserror::Error;

/// Errors raised when a value does not satisfy a domain invariant.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A quantile level outside the open interval (0, 1) or not finite.
    #[error("quantile {value} is outside the open interval (0, 1)")]
    QuantileOutOfRange {
        /// The rejected level.
        value: f64,
    },
    /// A set of quantile levels that is empty, unsorted or has duplicates.
    #[error("quantile levels must be non-empty and strictly increasing: {levels:?}")]
    QuantileSetUnordered {
        /// The rejected levels.
        levels: Vec<f64>,
    },
    /// A horizon of zero steps or beyond the limit.
    #[error("horizon {steps} is out of range: it must be between 1 and {max}")]
    HorizonOutOfRange {
        /// The rejected number of steps.
        steps: u64,
        /// The largest accepted horizon.
        max: u32,
    },
    /// A series key field that is empty, too long or has control characters.
    #[error("{field} {value:?} is invalid: {reason}")]
    InvalidKeyField {
        /// Which field of the key (`app`, `shard_type`, `metric`, `series`).
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A grid step that does not parse or is not positive.
    #[error(
        "grid step {text:?} is invalid: expected a positive duration such as 5m, 30m, 1h or 1d"
    )]
    InvalidGridStep {
        /// The rejected text.
        text: String,
    },
    /// A time that is not ISO 8601.
    #[error(
        "`{text}` is not a time: use 2017-01-20, 2017-01-20 12:00:00 or 2017-01-20T12:00:00Z (UTC unless an offset is given)"
    )]
    InvalidTime {
        /// The rejected text.
        text: String,
    },
    /// A duration such as `10m` or `0` that does not parse.
    #[error("duration {text:?} is invalid: expected 0 or a duration such as 30s, 15m, 1h or 2d")]
    InvalidDuration {
        /// The rejected text.
        text: String,
    },
    /// Forecast values whose shape does not match horizon × quantiles.
    #[error("forecast has {got} values, expected {horizon} steps × {quantiles} quantiles")]
    ForecastShape {
        /// Number of values given.
        got: usize,
        /// Horizon in steps.
        horizon: usize,
        /// Number of quantile levels.
        quantiles: usize,
    },
    /// Forecast values that are not finite or whose quantiles cross.
    #[error("forecast step {step}: {reason}")]
    ForecastValues {
        /// Zero-based horizon step.
        step: usize,
        /// What is wrong with the values.
        reason: &'static str,
    },
    /// A context that a forecaster cannot use.
    #[error("invalid forecast context: {reason}")]
    InvalidContext {
        /// What is wrong with the context.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
