//! Fused recurrent layers of shardcast: Candle LSTM and GRU stacks whose
//! recurrence over a whole sequence is a single custom op with a
//! hand-written backward pass, so `loss.backward()` and candle-nn optimizers
//! work unchanged.
//!
//! This crate owns the layers and everything under them. LSTM and GRU are
//! two implementations of one [`Cell`] trait (gate count, state, the fused
//! step kernels forward and backward); the layer ([`RnnLayer`]), the stack
//! ([`Rnn`]), the Candle op over the whole sequence and the recurrence from
//! standard tensor ops for devices other than the CPU (CUDA, the `cuda`
//! feature) are generic over it, and `Lstm`, `Gru` and their companions are
//! aliases of the generic types. Under them: a register-tiled GEMM,
//! vectorised activations and recycled activation buffers. It knows
//! nothing of forecasting (`shardcast-model` builds its forecaster on it)
//! and uses no workspace crate.
//!
//! Weight names and layouts are PyTorch's, so PyTorch state dicts and
//! candle-nn's `LSTM` and `GRU` load unchanged.

mod cell;
mod error;
mod fused;
mod gru;
mod kernel;
mod layer;
mod lstm;
mod op;
mod portable;
mod scratch;
mod seq_out;
mod storage;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

pub use cell::Cell;
pub use error::{Error, Result};
pub use gru::{Gru, GruCell, GruConfig, GruLayer, GruOutput, GruStackOutput};
pub use layer::{LayerOutput, Rnn, RnnConfig, RnnLayer, StackOutput};
pub use lstm::{Lstm, LstmCell, LstmConfig, LstmLayer, LstmOutput, LstmStackOutput, LstmState};
