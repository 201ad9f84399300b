//! The shardcast planner: forecasts plus current state plus policy in,
//! decisions with reasons out.
//!
//! It owns:
//! - [`scale`]: how many shards of each type to run, from the forecast's
//!   quantiles over the provisioning lead time, with stabilisation, step
//!   limits, warm pools, rollback of unhealthy shards and a reactive
//!   fallback;
//! - [`placement`]: multi-resource placement of shards (and their shadow
//!   standbys) onto hosts, best-fit decreasing then simulated annealing
//!   with a seeded generator;
//! - [`migration`]: the fewest moves that restore constraints and balance
//!   when usage leaves the forecast;
//! - [`demand`]: the distribution of shards a forecast needs over a
//!   look-ahead window;
//! - [`traffic`]: per-shard weights and consistent hashing with bounded
//!   loads for session affinity;
//! - [`provider`]: prices, reliability and the bill a plan implies;
//! - [`simulator`]: trace replay of protocol P against a reactive
//!   autoscaler and a perfect-foresight oracle.
//!
//! It must stay pure and deterministic: no I/O, no clock, no threads, no
//! global state. The caller passes `now` and the state; the same inputs give
//! the same outputs. Randomised search draws from a generator seeded by the
//! policy.
//!
//! Neighbours: it depends on `shardcast-core` alone (forecast, decision and
//! resource types). The daemon (`shardcast-daemon`) calls it in its loop and
//! acts on the decisions; the binary's `plan` and `simulate` subcommands
//! wire it to files.

pub mod demand;
mod error;
pub mod migration;
pub mod placement;
pub mod provider;
pub mod scale;
pub mod simulator;
pub mod traffic;

pub use error::{Error, Result};
