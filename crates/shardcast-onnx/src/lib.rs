//! ONNX for shardcast: the export of a trained forecaster as a standard
//! ONNX graph, the input contract stored with it, and loading and running
//! the exported graphs.
//!
//! This crate owns everything ONNX: the graph writer ([`export`],
//! [`to_bytes`]), the [`Contract`] and the one function that fills its input
//! tensors ([`Contract::inputs`]), and [`OnnxModel`], which the inference
//! server and `shardcast export-onnx` load files with. It builds on
//! `shardcast-model` (the [`Model`](shardcast_model::forecaster::Model), its
//! weights and configuration); the model crate knows nothing of ONNX.
//!
//! [`export`] writes a standard ONNX file (opset 17, IR 8, default domain
//! only) that computes exactly what [`Model::forecast_rows`](shardcast_model::forecaster::Model::forecast_rows)
//! does, from inputs close to the raw series: the window normalisation,
//! history fill, lag gathering, calendar features, every ensemble member's
//! GRU or LSTM encoder and quantile head, the ensemble mean, the calibration
//! and the de-normalisation all live in the graph. Every GRU and LSTM node
//! gets its zero initial state as an input, so that engines can prepare the
//! graph once for any batch size. The protobuf is written with the messages
//! of [`proto`], generated from the ONNX schema vendored in `proto/` (ONNX
//! 1.17.0) by protox and prost-build, so no `protoc`; the file goes to a
//! temp name and is renamed into place. Beside `model.onnx`, the same contract is
//! written as `model.onnx.json` (see [`contract_path`]) for clients that do
//! not read ONNX metadata.
//!
//! # Input contract
//!
//! With `L` = [`Contract::window`] (`max(context + largest lag,
//! max(context, season))`), `C` = context, `H` = horizon, `Q` = quantile
//! levels and `B` the batch:
//!
//! | input | dtype | shape | meaning |
//! |---|---|---|---|
//! | `values` | float32 | `[B, L]` | the last `L` grid values before the origin, oldest first; a shorter history is right-aligned and the entries before it are ignored |
//! | `history_len` | int64 | `[B]` | observed points at the end of `values`: `min(points before the origin, L)`, at least 1 |
//! | `origin_ts` | int64 | `[B]` | time of the first forecast point, ms since the epoch, UTC (only when the model uses calendar features) |
//! | `events` | float32 | `[B, C + H]` | event indicator of the `C` steps before the origin, then of the `H` forecast steps (only when the model uses events) |
//! | `series_id` | int64 | `[B]` | the series' row in the contract's `series` table, 0 for an unknown series |
//! | `shard_type_id` | int64 | `[B]` | the shard type's row in `shard_types`, 0 when unknown |
//! | `series_scale` | float32 | `[B, 2]` | `(mean, deviation)` of the series' training range from `series`; for row 0, the mean and mean absolute deviation of the whole observed history |
//!
//! The one output is `quantiles`, float32 `[B, H, Q]`: the calibrated
//! forecast quantiles in the series' units, ascending along the last axis at
//! the levels of [`Contract::quantiles`]. [`Contract::inputs`] builds these
//! tensors from `(SeriesInput, origin)` windows, so a Rust server and the
//! tests fill them the same way; a Python client follows the table above
//! with the `series` and `shard_types` tables of the contract JSON (the
//! file's `shardcast.contract` metadata, also in `<file>.json`).
//!
//! Computed inside the graph from those inputs: the fill of history before
//! the first point (the same phase of the earliest observed season, else the
//! first value), the window mean and mean absolute deviation over the last
//! `max(context, season)` observed points (in float64, as the Rust code
//! accumulates them), the scale floor, the clipped normalised values and
//! lags, time of day and day of week as sine/cosine from `origin_ts` and the
//! grid step, the per-member networks, the ensemble mean, the calibration
//! and the map back to the series' units. What stays outside is looking up
//! the series and shard-type rows and scalers, and the event indicator.
//!
//! # Running exported graphs
//!
//! [`OnnxModel`] checks such a file (the protobuf, the contract in its
//! metadata, initializers, every node's operator and inputs, the graph's
//! inputs and output against the contract) and refuses a bad one with the
//! file and the part that is wrong, then hands it to
//! [tract](https://github.com/sonos/tract), a pure-Rust ONNX engine, which
//! prepares one optimised plan for all batch sizes. Serving ONNX so needs
//! neither Python nor a native library. `examples/onnx_engines.rs` times
//! it against `Model::forecast_rows` on Candle (and onnxruntime with the
//! `bench-ort` feature).

mod contract;
mod engine;
mod error;
mod export;
mod forecaster;
pub mod proto;
#[cfg(test)]
mod tests;

pub use contract::{
    BATCH, CONTRACT_FORMAT, CONTRACT_VERSION, Contract, ContractSeries, ContractShardType, Dim,
    EVENTS, HISTORY_LEN, METADATA_KEY, ORIGIN_TS, OnnxInputs, QUANTILES, SERIES_ID, SERIES_SCALE,
    SHARD_TYPE_ID, TensorSpec, VALUES,
};
pub use engine::OnnxModel;
pub use error::{Error, Result};
pub use export::{OPSET, contract_path, export, to_bytes};
