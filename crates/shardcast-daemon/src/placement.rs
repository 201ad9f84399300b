//! Placement of each round's shards onto the hosts of the state file: the
//! shards kept (on their current hosts when the placer agrees) and the new
//! ones, through the planner's best-fit start and annealing.

use serde::{Deserialize, Serialize};
use shardcast_core::{Resources, Timestamp};
use shardcast_planner::placement::{
    Host, Placement, PlacementPolicy, PlacementProblem, ShardSpec, place,
};

/// How a shard of a shard type looks to the placer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTemplate {
    /// What one shard asks for.
    pub request: Resources,
    /// Shards of the same group run on distinct hosts.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// Shards of the same group spread evenly across zones.
    #[serde(default)]
    pub spread: Option<String>,
    /// Zones the shards may run in; empty means any.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Each shard gets a standby on another host and zone.
    #[serde(default)]
    pub shadow: bool,
}

/// A shard running now, as the state file reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningShard {
    /// Its id.
    pub id: String,
    /// The host it runs on.
    #[serde(default)]
    pub host: Option<String>,
    /// The host its standby runs on.
    #[serde(default)]
    pub shadow_host: Option<String>,
}

/// One round's placement: a line of its own in the daemon's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// When the round planned.
    pub at: Timestamp,
    /// Running shards to release: each shard type's surplus over its
    /// desired count, the last ones the state file lists.
    pub released: Vec<String>,
    /// Ids given to the shards to launch.
    pub launched: Vec<String>,
    /// Where every kept and new shard goes, with the moves, the shards that
    /// could not be placed (and why), the cost and the bill.
    pub placement: Placement,
}

/// One shard type's part of the problem.
pub(crate) struct Wanted<'a> {
    pub(crate) shard_type: &'a str,
    pub(crate) desired: u32,
    pub(crate) template: &'a ShardTemplate,
    pub(crate) running: &'a [RunningShard],
}

/// Places the desired shards of every shard type on `hosts`.
pub(crate) fn plan(
    at: Timestamp,
    hosts: &[Host],
    wanted: &[Wanted<'_>],
    policy: &PlacementPolicy,
) -> shardcast_planner::Result<PlacementRecord> {
    let mut shards = Vec::new();
    let (mut released, mut launched) = (Vec::new(), Vec::new());
    let known = |h: &Option<String>| h.clone().filter(|h| hosts.iter().any(|x| x.id == *h));
    for w in wanted {
        let keep = (w.desired as usize).min(w.running.len());
        released.extend(w.running[keep..].iter().map(|r| r.id.clone()));
        let spec = |id: String, running: Option<&RunningShard>| ShardSpec {
            id,
            request: w.template.request,
            anti_affinity: w.template.anti_affinity.clone(),
            spread: w.template.spread.clone(),
            zones: w.template.zones.clone(),
            affinity: Vec::new(),
            depends_on: Vec::new(),
            shadow: w.template.shadow,
            // A host the state file no longer lists is gone: its shards
            // are placed afresh.
            current_host: running.and_then(|r| known(&r.host)),
            current_shadow_host: running.and_then(|r| known(&r.shadow_host)),
        };
        shards.extend(
            w.running[..keep]
                .iter()
                .map(|r| spec(r.id.clone(), Some(r))),
        );
        let mut next = w.running.len();
        for _ in keep..w.desired as usize {
            let id = loop {
                let id = format!("{}-{next}", w.shard_type);
                next += 1;
                if w.running.iter().all(|r| r.id != id) {
                    break id;
                }
            };
            launched.push(id.clone());
            shards.push(spec(id, None));
        }
    }
    let problem = PlacementProblem {
        hosts: hosts.to_vec(),
        shards,
    };
    Ok(PlacementRecord {
        at,
        released,
        launched,
        placement: place(&problem, policy)?,
    })
}
