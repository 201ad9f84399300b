//! Prometheus in and out of shardcast. This crate owns how Prometheus'
//! series become store points: the [`rules::LabelRules`] that turn a label
//! set into a series key, the decoding of remote-write bodies
//! ([`remote_write`], served by `shardcast-server`), and pulls of
//! `query_range` results into the store ([`pull`], `shardcast pull`); and
//! the `/metrics` endpoint through which the server and the daemon are
//! scraped ([`exposition`]). It speaks Prometheus' own wire formats; it
//! stores through `shardcast-store` and keeps no state of its own.

pub mod exposition;
pub mod pull;
pub mod remote_write;
pub mod rules;

pub use rules::{KeyPart, LabelRules};
