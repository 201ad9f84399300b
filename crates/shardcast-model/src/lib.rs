//! Demand models of shardcast: the probabilistic forecaster and the
//! recurrent layers it is built from.
//!
//! This crate owns the model: Candle LSTM/GRU layers whose recurrence over a
//! whole sequence is a single custom op with a hand-written backward pass
//! (so `loss.backward()` and candle-nn optimizers work unchanged), the CPU
//! kernels behind them (and the same recurrences from standard tensor ops
//! for training on a CUDA GPU, the `cuda` feature), the global quantile
//! forecaster with its training loop and model directories ([`forecaster`]),
//! protocol F's backtest and metrics ([`backtest`], [`metrics`]) and the
//! protocol T benchmark. It takes series as plain `f32` grids; it never
//! reads the store. Of the workspace crates it may use `shardcast-core`
//! only. ONNX export and loading live in `shardcast-onnx`, which builds on
//! this crate.
//!
//! Weight names and layouts are PyTorch's, so candle-nn's `LSTM` and
//! PyTorch state dicts load unchanged.

pub mod backtest;
pub mod bench;
mod error;
pub mod forecaster;
pub mod gru;
mod kernel;
pub mod lstm;
pub mod metrics;
mod portable;
mod scratch;
mod seq_out;
mod storage;
#[cfg(test)]
mod test_util;
pub mod versions;

pub use error::{Error, Result};
pub use gru::{Gru, GruConfig, GruLayer, GruOutput, GruStackOutput};
pub use lstm::{Lstm, LstmConfig, LstmLayer, LstmOutput, LstmStackOutput, LstmState};
