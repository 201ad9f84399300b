use thiserror::Error;

/// Errors of the planner: bad policies and inputs that no plan can be made
/// from. An unplaceable shard is not an error: it is part of a placement.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A policy or input field out of its valid range.
    #[error("{field} = {value} is invalid: {reason}")]
    InvalidValue {
        /// The field, e.g. `scale.service_level`.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// What the valid range is.
        reason: &'static str,
    },
    /// Two ids that must be unique are equal.
    #[error("duplicate {kind} id {id:?}")]
    DuplicateId {
        /// `host` or `shard`.
        kind: &'static str,
        /// The repeated id.
        id: String,
    },
    /// A reference to an id that does not exist.
    #[error("{kind} {from:?} refers to unknown {target_kind} {id:?}")]
    UnknownId {
        /// What holds the reference, e.g. `shard`.
        kind: &'static str,
        /// Id of the holder.
        from: String,
        /// What kind of thing is referred to, e.g. `host`.
        target_kind: &'static str,
        /// The unknown id.
        id: String,
    },
    /// A trace with no values or a non-finite value.
    #[error("trace value {index} is {value}: demand must be finite and not negative")]
    InvalidTrace {
        /// Index of the bad value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// An empty trace.
    #[error("trace is empty")]
    EmptyTrace,
    /// A domain value rejected by core.
    #[error(transparent)]
    Core(#[from] shardcast_core::Error),
    /// A simulation that cannot be set up as asked (an empty sweep, a
    /// range without points, a malformed settings document).
    #[error("{0}")]
    Setup(String),
    /// Forecasts a simulation cannot use: a forecaster that failed or does
    /// not fit the trace's grid and look-ahead, or a demand series that is
    /// not the trace.
    #[error("forecasts: {0}")]
    Forecasts(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks `lo <= value <= hi` (and finiteness) for a policy field.
pub(crate) fn check_range(
    field: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
    reason: &'static str,
) -> Result<()> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            field,
            value,
            reason,
        })
    }
}

/// Checks `0 < value < 1`.
pub(crate) fn check_open_unit(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            field,
            value,
            reason: "must lie strictly between 0 and 1",
        })
    }
}
