//! Demand models of shardcast: the probabilistic forecaster, built on the
//! fused recurrent layers of `shardcast-nn`.
//!
//! This crate owns the model: the global quantile forecaster with its
//! training loop and model directories ([`forecaster`]; on a CUDA GPU with
//! the `cuda` feature), protocol F's backtest and metrics ([`backtest`],
//! [`metrics`]); the protocol T benchmark is `shardcast-nn`'s example. It takes series
//! as plain `f32` grids; it never reads the store. Of the workspace crates
//! it may use `shardcast-core`, `shardcast-fs` and `shardcast-nn` only.
//! ONNX export and loading live in `shardcast-onnx`, which builds on this
//! crate.

pub mod backtest;
mod error;
pub mod forecaster;
pub mod metrics;
pub mod retrain;
#[cfg(test)]
mod test_util;
pub mod versions;

pub use error::{Error, Result};
