//! Domain types of shardcast, shared by every other crate.
//!
//! This crate owns the vocabulary: [`SeriesKey`] (which series a point
//! belongs to), [`Quantile`] and [`QuantileForecast`] (a probabilistic
//! forecast whose quantiles never cross), [`Horizon`], [`Timestamp`] helpers
//! the [`Forecaster`] contract that every model implements (with
//! [`SeasonalNaive`], the baseline), the one seeded
//! generator of the workspace ([`rng`]) and configuration files laid over
//! defaults ([`overlay`]).
//!
//! It must stay free of I/O: no async runtime, no Arrow, Candle or tonic.
//! The store, model, planner and proto crates build on it; it depends on no
//! other workspace crate.

mod decision;
mod error;
mod forecast;
mod naive;
pub mod overlay;
mod quantile;
mod resources;
pub mod rng;
mod series;
mod time;

pub use decision::{
    Adjustment, Decision, FallbackCause, ForecastBasis, ReactiveBasis, ScaleBasis, ScaleReason,
    WindowPart,
};
pub use error::{Error, Result};
pub use forecast::{ForecastSpec, Forecaster, QuantileForecast, Window};
pub use naive::SeasonalNaive;
pub use quantile::{Horizon, PROTOCOL_QUANTILES, Quantile, QuantileSet};
pub use resources::Resources;
pub use series::{SeriesKey, ShardType};
pub use time::{GridStep, Timestamp, parse_duration};
