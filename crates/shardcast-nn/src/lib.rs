//! Fused recurrent layers of shardcast: Candle LSTM and GRU stacks whose
//! recurrence over a whole sequence is a single custom op with a
//! hand-written backward pass, so `loss.backward()` and candle-nn optimizers
//! work unchanged.
//!
//! This crate owns the layers and everything under them: the CPU kernels
//! (a register-tiled GEMM, vectorised activations, recycled activation
//! buffers), the Candle ops that wrap them, and the same recurrences from
//! standard tensor ops for devices other than the CPU (CUDA, the `cuda`
//! feature). It knows nothing of forecasting; `shardcast-model` builds its
//! forecaster on it. It uses no workspace crate.
//!
//! Weight names and layouts are PyTorch's, so PyTorch state dicts and
//! candle-nn's `LSTM` and `GRU` load unchanged.

mod error;
pub mod gru;
mod kernel;
pub mod lstm;
mod portable;
mod scratch;
mod seq_out;
mod storage;
#[cfg(test)]
mod test_util;

pub use error::{Error, Result};
pub use gru::{Gru, GruConfig, GruLayer, GruOutput, GruStackOutput};
pub use lstm::{Lstm, LstmConfig, LstmLayer, LstmOutput, LstmStackOutput, LstmState};
