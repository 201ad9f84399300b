//! What the daemon knows about the running shards: read from a state file
//! that whoever runs the shards keeps current, or assumed from the daemon's
//! own decisions when there is none.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shardcast_planner::placement::Host;

use crate::placement::RunningShard;

use crate::error::{Error, Result};

/// The state file: per shard type, the shards running now and the demand
/// seen over the last step.
///
/// ```json
/// {"shard_types": {"ec2-cpu": {"ready": 3, "pending": 1, "unhealthy": 0, "observed_demand": 41.5}}}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Keyed by shard type.
    pub shard_types: BTreeMap<String, Observed>,
    /// Hosts shards can be placed on; when given, shard types with a
    /// `placement` template are placed every round.
    #[serde(default)]
    pub hosts: Vec<Host>,
}

/// One shard type as observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    /// Shards serving.
    pub ready: u32,
    /// Shards launched, not yet serving.
    #[serde(default)]
    pub pending: u32,
    /// Shards failing health checks.
    #[serde(default)]
    pub unhealthy: u32,
    /// Demand over the last step, in demand units (the reactive fallback
    /// steers on it).
    #[serde(default)]
    pub observed_demand: Option<f64>,
    /// The running shards and their hosts, for placement.
    #[serde(default)]
    pub shards: Vec<RunningShard>,
}

impl StateFile {
    /// Reads and checks the file: JSON, non-negative finite demand, and an
    /// entry for every shard type in `wanted`.
    pub fn load(path: &Path, wanted: &[&str]) -> Result<Self> {
        let bad = |detail: String| Error::State {
            path: path.to_owned(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let state: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for (name, o) in &state.shard_types {
            if let Some(d) = o.observed_demand
                && !(d.is_finite() && d >= 0.0)
            {
                return Err(bad(format!(
                    "shard_types.{name}.observed_demand = {d}: must be finite and not negative"
                )));
            }
        }
        if let Some(missing) = wanted.iter().find(|w| !state.shard_types.contains_key(**w)) {
            return Err(bad(format!("shard_types has no entry for {missing:?}")));
        }
        Ok(state)
    }
}
