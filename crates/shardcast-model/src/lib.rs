//! Demand models of shardcast: the recurrent layers the forecasting model is
//! built from.
//!
//! This crate owns compute: Candle LSTM layers whose recurrence over a whole
//! sequence is a single custom op with a hand-written backward pass
//! (so `loss.backward()` and candle-nn optimizers work unchanged), the CPU
//! kernels behind them, and the protocol T benchmark. It reads and writes no
//! data except through Candle's own save/load. Of the workspace crates it may
//! use `shardcast-core` only, never the store, server or planner.
//!
//! Weight names and layouts are PyTorch's, so candle-nn's `LSTM` and
//! PyTorch state dicts load unchanged.

pub mod bench;
mod error;
mod kernel;
pub mod lstm;
mod storage;
#[cfg(test)]
mod test_util;

pub use error::{Error, Result};
pub use lstm::{Lstm, LstmConfig, LstmLayer, LstmOutput, LstmStackOutput, LstmState};
