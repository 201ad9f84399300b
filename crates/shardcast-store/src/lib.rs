//! The shardcast metric store: ingestion, Parquet storage through
//! `object_store`, DataFusion queries, resampling and training windows.
//!
//! This is the only crate that touches stored data. It owns the Arrow
//! schemas ([`schema`]), parsing of CSV and NDJSON input ([`ingest`]), the
//! atomic, deduplicating writer and compaction ([`Store`]), SQL and series
//! extraction ([`query`]), grids ([`resample`]) and series selected onto
//! a grid with their event covariate ([`grids`]). It hands the model crate
//! plain `f32` buffers; it knows nothing of models, servers or planners.
//! Neighbours: `shardcast-core` below it; the model, server and binary above.

mod error;
pub mod grids;
pub mod ingest;
mod manifest;
pub mod query;
pub mod resample;
pub mod schema;
mod store;

pub use error::{Error, Result, RowError};
pub use manifest::{FileEntry, MANIFEST_FORMAT, Manifest, TableKind};
pub use store::{
    COMMIT_DEADLINE, CompactSummary, DEFAULT_GRACE, MAX_COMMIT_ATTEMPTS, Store, WriteSummary,
};
