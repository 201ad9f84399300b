//! Placement: shards with multi-resource requests onto hosts.
//!
//! # Hard constraints (never violated by a returned placement)
//! - capacity: the requests on a host fit its capacity in every dimension;
//! - zones: a shard with `zones` set runs only in those zones;
//! - anti-affinity: shards of one `anti_affinity` group run on distinct hosts;
//! - zone spread: the shards of one `spread` group differ by at most
//!   `max_skew` between any two zones that the group may use (the
//!   Kubernetes `topologySpreadConstraints` rule, counted over placed shards);
//! - shadow: a shard with `shadow: true` gets a standby on a different host
//!   in a different zone; a shadow is placed only with its primary.
//!
//! # Cost (weighted sum, lower is better; see [`CostWeights`])
//! - imbalance: standard deviation of utilisation over hosts in use;
//! - stranded capacity: free capacity on hosts that can no longer take even
//!   the smallest request (full in one dimension, the rest unusable);
//! - latency between dependent shards (from [`LatencyModel`]);
//! - broken soft affinities, price per hour of the hosts in use (reserved
//!   hosts are paid anyway), expected shards lost to host failures;
//! - moves away from each shard's current host.
//!
//! Placing more shards always beats any cost: placements compare first by
//! the number of unplaced shards.
//!
//! # Search
//! Best-fit decreasing and first-fit decreasing starts; the better one is
//! improved by simulated annealing (relocate and swap moves, geometric
//! cooling) drawing from a generator seeded by the policy, within an
//! iteration budget, then by a steepest-descent pass. The result is
//! deterministic and never worse than either start. A shard that cannot be
//! placed is listed with the reasons each host refused it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use shardcast_core::Resources;

use crate::error::{Error, Result, check_range};
use crate::provider::{Bill, Pricing};

mod anneal;

/// A machine shards run on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Unique id.
    pub id: String,
    /// What it offers.
    pub capacity: Resources,
    /// Availability zone.
    pub zone: String,
    /// Provider name.
    #[serde(default)]
    pub provider: String,
    /// Price.
    #[serde(default)]
    pub pricing: Pricing,
    /// Probability it stays up over the planning period, in (0, 1].
    #[serde(default = "one")]
    pub reliability: f64,
}

fn one() -> f64 {
    1.0
}

/// A shard to place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    /// Unique id.
    pub id: String,
    /// What it asks for.
    pub request: Resources,
    /// Shards of the same group run on distinct hosts.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// Shards of the same group spread evenly across zones.
    #[serde(default)]
    pub spread: Option<String>,
    /// Zones it may run in; empty means any.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Shards it prefers to share a host with (soft).
    #[serde(default)]
    pub affinity: Vec<String>,
    /// Shards it talks to: latency to them is a cost.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Whether it needs a shadow standby on another host and zone.
    #[serde(default)]
    pub shadow: bool,
    /// Host it runs on now, if any (moving it costs).
    #[serde(default)]
    pub current_host: Option<String>,
    /// Host its shadow runs on now, if any.
    #[serde(default)]
    pub current_shadow_host: Option<String>,
}

/// Hosts and shards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementProblem {
    /// Hosts available.
    pub hosts: Vec<Host>,
    /// Shards to place.
    pub shards: Vec<ShardSpec>,
}

/// Latency between two hosts by how far apart they are, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyModel {
    /// Same host.
    pub same_host: f64,
    /// Same zone, different hosts.
    pub same_zone: f64,
    /// Same provider, different zones.
    pub same_provider: f64,
    /// Different providers.
    pub cross_provider: f64,
}

impl Default for LatencyModel {
    fn default() -> Self {
        Self {
            same_host: 0.0,
            same_zone: 0.5,
            same_provider: 2.0,
            cross_provider: 20.0,
        }
    }
}

/// Weights of the cost terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostWeights {
    /// Per unit of utilisation standard deviation.
    pub imbalance: f64,
    /// Per host-equivalent of stranded capacity.
    pub stranded: f64,
    /// Per millisecond of latency between dependent shards.
    pub latency: f64,
    /// Per broken soft affinity.
    pub affinity: f64,
    /// Per unit of price per hour.
    pub price: f64,
    /// Per expected shard lost to host failure.
    pub failure: f64,
    /// Per shard moved off its current host.
    pub moves: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        Self {
            imbalance: 1.0,
            stranded: 1.0,
            latency: 0.1,
            affinity: 0.5,
            price: 0.1,
            failure: 1.0,
            moves: 0.2,
        }
    }
}

/// How to place. Data: parse it from TOML or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementPolicy {
    /// Largest difference in a spread group's count between two zones.
    pub max_skew: u32,
    /// Cost weights.
    pub weights: CostWeights,
    /// Latency model.
    pub latency: LatencyModel,
    /// Annealing moves to try in all (0: greedy start and descent only).
    pub iterations: u64,
    /// Annealing runs sharing the budget, each from the best so far.
    pub restarts: u32,
    /// Seed of the move generator.
    pub seed: u64,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        Self {
            max_skew: 1,
            weights: CostWeights::default(),
            latency: LatencyModel::default(),
            iterations: 20_000,
            restarts: 4,
            seed: 0x5eed,
        }
    }
}

/// Whether a placed shard is the primary or its standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The serving shard.
    Primary,
    /// Its synchronised standby, promoted when the primary fails.
    Shadow,
}

/// One shard on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Shard id.
    pub shard: String,
    /// Primary or shadow.
    pub role: Role,
    /// Host id.
    pub host: String,
}

/// Why a host refused a shard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "block", rename_all = "snake_case")]
pub enum Block {
    /// The shard may not run in the host's zone.
    Zone,
    /// Not enough free capacity in a dimension.
    Capacity {
        /// `cpu`, `memory` or `bandwidth`.
        dimension: String,
    },
    /// Another shard of the anti-affinity group is on the host.
    AntiAffinity,
    /// Placing it there would exceed the zone-spread skew.
    Spread,
    /// The host or zone is the primary's (for a shadow) or the shadow's.
    ShadowSeparation,
    /// A shadow whose primary is not placed.
    PrimaryUnplaced,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Block::Zone => f.write_str("zone not allowed"),
            Block::Capacity { dimension } => write!(f, "not enough {dimension}"),
            Block::AntiAffinity => f.write_str("anti-affinity"),
            Block::Spread => f.write_str("zone spread"),
            Block::ShadowSeparation => f.write_str("shadow must be on another host and zone"),
            Block::PrimaryUnplaced => f.write_str("primary not placed"),
        }
    }
}

/// A shard that could not be placed, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unplaced {
    /// Shard id.
    pub shard: String,
    /// Primary or shadow.
    pub role: Role,
    /// How many hosts refused it for each reason (a host counts once, for
    /// the first reason found).
    pub blocked: Vec<(Block, u32)>,
    /// The same as a sentence.
    pub message: String,
}

/// The terms of a placement's cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostBreakdown {
    /// Shards (primaries and shadows) not placed.
    pub unplaced: usize,
    /// Standard deviation of utilisation over hosts in use.
    pub imbalance: f64,
    /// Stranded capacity, in host-equivalents.
    pub stranded: f64,
    /// Latency summed over dependencies, in milliseconds.
    pub latency_ms: f64,
    /// Soft affinities not met.
    pub affinity_breaks: u32,
    /// Price per hour of the hosts paid for.
    pub price_per_hour: f64,
    /// Expected shards lost to host failures.
    pub expected_failures: f64,
    /// Shards moved off their current host.
    pub moves: u32,
    /// Weighted sum of the soft terms.
    pub total: f64,
}

impl CostBreakdown {
    /// True when `self` is better than `other`: fewer unplaced shards, then
    /// a lower total.
    pub fn better_than(&self, other: &CostBreakdown) -> bool {
        (self.unplaced, self.total) < (other.unplaced, other.total)
    }
}

/// A move of a shard off its current host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Shard id.
    pub shard: String,
    /// Primary or shadow.
    pub role: Role,
    /// Host it leaves.
    pub from: String,
    /// Host it goes to; `None` when it could not be placed.
    pub to: Option<String>,
}

/// A placement with its cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Shards placed, primaries before shadows, in input order.
    pub assignments: Vec<Assignment>,
    /// Shards not placed, with reasons.
    pub unplaced: Vec<Unplaced>,
    /// Moves off current hosts.
    pub moves: Vec<Move>,
    /// Cost of this placement.
    pub cost: CostBreakdown,
    /// Cost of the greedy start it improved on.
    pub start_cost: CostBreakdown,
    /// The bill of the hosts paid for.
    pub bill: Bill,
}

/// One thing to place: a primary or a shadow.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) shard: usize,
    pub(crate) role: Role,
    pub(crate) req: [f64; 3],
    pub(crate) anti: Option<usize>,
    pub(crate) spread: Option<usize>,
    /// The other half of a primary/shadow pair.
    pub(crate) partner: Option<usize>,
    pub(crate) current: Option<usize>,
}

/// A problem compiled to indices.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) items: Vec<Item>,
    pub(crate) cap: Vec<[f64; 3]>,
    pub(crate) zone: Vec<usize>,
    pub(crate) provider: Vec<usize>,
    pub(crate) pricing: Vec<Pricing>,
    pub(crate) reliability: Vec<f64>,
    /// `allowed[item][host]`.
    pub(crate) allowed: Vec<Vec<bool>>,
    /// Zones each spread group may use.
    pub(crate) spread_zones: Vec<Vec<usize>>,
    pub(crate) zones: usize,
    pub(crate) anti_groups: usize,
    /// Pairs of items (primaries) with latency between them.
    pub(crate) deps: Vec<(usize, usize)>,
    /// Pairs of items (primaries) that prefer one host.
    pub(crate) affinities: Vec<(usize, usize)>,
    pub(crate) min_req: [f64; 3],
    pub(crate) max_skew: u32,
    pub(crate) weights: CostWeights,
    pub(crate) latency: LatencyModel,
}

impl Model {
    pub(crate) fn compile(problem: &PlacementProblem, policy: &PlacementPolicy) -> Result<Self> {
        let mut host_ix = HashMap::new();
        for (i, h) in problem.hosts.iter().enumerate() {
            if host_ix.insert(h.id.as_str(), i).is_some() {
                return Err(Error::DuplicateId {
                    kind: "host",
                    id: h.id.clone(),
                });
            }
            if !h.capacity.is_valid() {
                return Err(Error::InvalidValue {
                    field: "host.capacity",
                    value: h.capacity.to_array().into_iter().fold(f64::NAN, f64::min),
                    reason: "must be finite and not negative",
                });
            }
            check_range(
                "host.reliability",
                h.reliability,
                0.0,
                1.0,
                "must lie in [0, 1]",
            )?;
            check_range(
                "host.pricing.hourly",
                h.pricing.hourly,
                0.0,
                f64::MAX,
                "must be finite and not negative",
            )?;
        }
        let mut shard_ix = HashMap::new();
        for (i, s) in problem.shards.iter().enumerate() {
            if shard_ix.insert(s.id.as_str(), i).is_some() {
                return Err(Error::DuplicateId {
                    kind: "shard",
                    id: s.id.clone(),
                });
            }
            if !s.request.is_valid() {
                return Err(Error::InvalidValue {
                    field: "shard.request",
                    value: s.request.to_array().into_iter().fold(f64::NAN, f64::min),
                    reason: "must be finite and not negative",
                });
            }
        }
        let zone_id = index_strings(problem.hosts.iter().map(|h| h.zone.as_str()));
        let provider_id = index_strings(problem.hosts.iter().map(|h| h.provider.as_str()));
        let zone: Vec<usize> = problem
            .hosts
            .iter()
            .map(|h| zone_id[h.zone.as_str()])
            .collect();
        let provider: Vec<usize> = problem
            .hosts
            .iter()
            .map(|h| provider_id[h.provider.as_str()])
            .collect();
        let anti_id = index_strings(
            problem
                .shards
                .iter()
                .filter_map(|s| s.anti_affinity.as_deref()),
        );
        let spread_id = index_strings(problem.shards.iter().filter_map(|s| s.spread.as_deref()));

        let mut items = Vec::new();
        let mut primary_item = vec![0; problem.shards.len()];
        for (si, s) in problem.shards.iter().enumerate() {
            let lookup = |h: &Option<String>| -> Result<Option<usize>> {
                match h {
                    Some(h) => Ok(Some(*host_ix.get(h.as_str()).ok_or_else(|| {
                        Error::UnknownId {
                            kind: "shard",
                            from: s.id.clone(),
                            target_kind: "host",
                            id: h.clone(),
                        }
                    })?)),
                    None => Ok(None),
                }
            };
            let current = lookup(&s.current_host)?;
            let current_shadow = lookup(&s.current_shadow_host)?;
            primary_item[si] = items.len();
            let base = Item {
                shard: si,
                role: Role::Primary,
                req: s.request.to_array(),
                anti: s.anti_affinity.as_deref().map(|g| anti_id[g]),
                spread: s.spread.as_deref().map(|g| spread_id[g]),
                partner: None,
                current,
            };
            if s.shadow {
                let p = items.len();
                items.push(Item {
                    partner: Some(p + 1),
                    ..base.clone()
                });
                items.push(Item {
                    role: Role::Shadow,
                    anti: None,
                    spread: None,
                    partner: Some(p),
                    current: current_shadow,
                    ..base
                });
            } else {
                items.push(base);
            }
        }
        let allowed: Vec<Vec<bool>> = items
            .iter()
            .map(|it| {
                let zones = &problem.shards[it.shard].zones;
                problem
                    .hosts
                    .iter()
                    .map(|h| zones.is_empty() || zones.contains(&h.zone))
                    .collect()
            })
            .collect();
        let mut spread_zones = vec![Vec::new(); spread_id.len()];
        for (it, row) in items.iter().zip(&allowed) {
            if let Some(g) = it.spread {
                for (h, &ok) in row.iter().enumerate() {
                    if ok && !spread_zones[g].contains(&zone[h]) {
                        spread_zones[g].push(zone[h]);
                    }
                }
            }
        }
        let mut deps = Vec::new();
        let mut affinities = Vec::new();
        for (si, s) in problem.shards.iter().enumerate() {
            for (list, out) in [(&s.depends_on, &mut deps), (&s.affinity, &mut affinities)] {
                for other in list {
                    let oi = *shard_ix
                        .get(other.as_str())
                        .ok_or_else(|| Error::UnknownId {
                            kind: "shard",
                            from: s.id.clone(),
                            target_kind: "shard",
                            id: other.clone(),
                        })?;
                    if oi != si {
                        out.push((primary_item[si], primary_item[oi]));
                    }
                }
            }
        }
        let min_req = items.iter().fold([f64::INFINITY; 3], |m, it| {
            std::array::from_fn(|d| m[d].min(it.req[d]))
        });
        Ok(Self {
            items,
            cap: problem
                .hosts
                .iter()
                .map(|h| h.capacity.to_array())
                .collect(),
            zone,
            provider,
            pricing: problem.hosts.iter().map(|h| h.pricing).collect(),
            reliability: problem.hosts.iter().map(|h| h.reliability).collect(),
            allowed,
            spread_zones,
            zones: zone_id.len(),
            anti_groups: anti_id.len(),
            deps,
            affinities,
            min_req,
            max_skew: policy.max_skew,
            weights: policy.weights.clone(),
            latency: policy.latency.clone(),
        })
    }

    pub(crate) fn hosts(&self) -> usize {
        self.cap.len()
    }

    fn host_latency(&self, a: usize, b: usize) -> f64 {
        if a == b {
            self.latency.same_host
        } else if self.zone[a] == self.zone[b] {
            self.latency.same_zone
        } else if self.provider[a] == self.provider[b] {
            self.latency.same_provider
        } else {
            self.latency.cross_provider
        }
    }

    /// The cost of a complete state.
    pub(crate) fn cost(&self, st: &State) -> CostBreakdown {
        let mut c = CostBreakdown {
            unplaced: st.assign.iter().filter(|a| a.is_none()).count(),
            ..CostBreakdown::default()
        };
        let mut utils = Vec::new();
        for h in 0..self.hosts() {
            let reserved = self.pricing[h].class == crate::provider::PriceClass::Reserved;
            if st.count[h] == 0 {
                if reserved {
                    c.price_per_hour += self.pricing[h].hourly;
                }
                continue;
            }
            c.price_per_hour += self.pricing[h].hourly;
            c.expected_failures += f64::from(st.count[h]) * (1.0 - self.reliability[h]);
            let (mut u, mut dims) = (0.0, 0.0);
            let mut stranded = 0.0;
            let mut fits_smallest = true;
            for d in 0..3 {
                if self.cap[h][d] > 0.0 {
                    let used = st.used[h][d] / self.cap[h][d];
                    u += used;
                    dims += 1.0;
                    stranded += (1.0 - used).max(0.0);
                }
                if st.used[h][d] + self.min_req[d] > self.cap[h][d] + 1e-9 {
                    fits_smallest = false;
                }
            }
            if dims > 0.0 {
                utils.push(u / dims);
                if !fits_smallest {
                    c.stranded += stranded / dims;
                }
            }
        }
        if !utils.is_empty() {
            let mean = utils.iter().sum::<f64>() / utils.len() as f64;
            let var = utils.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / utils.len() as f64;
            c.imbalance = var.sqrt();
        }
        for &(a, b) in &self.deps {
            if let (Some(ha), Some(hb)) = (st.assign[a], st.assign[b]) {
                c.latency_ms += self.host_latency(ha, hb);
            }
        }
        for &(a, b) in &self.affinities {
            match (st.assign[a], st.assign[b]) {
                (Some(ha), Some(hb)) if ha == hb => {}
                _ => c.affinity_breaks += 1,
            }
        }
        for (it, a) in self.items.iter().zip(&st.assign) {
            if let Some(cur) = it.current
                && *a != Some(cur)
            {
                c.moves += 1;
            }
        }
        let w = &self.weights;
        c.total = w.imbalance * c.imbalance
            + w.stranded * c.stranded
            + w.latency * c.latency_ms
            + w.affinity * f64::from(c.affinity_breaks)
            + w.price * c.price_per_hour
            + w.failure * c.expected_failures
            + w.moves * f64::from(c.moves);
        c
    }

    /// The first reason `host` refuses item `i` in `st` (where `i` is not
    /// placed), ignoring zone spread, which is checked on whole moves.
    pub(crate) fn block(&self, st: &State, i: usize, h: usize) -> Option<Block> {
        let it = &self.items[i];
        if !self.allowed[i][h] {
            return Some(Block::Zone);
        }
        for d in 0..3 {
            if st.used[h][d] + it.req[d] > self.cap[h][d] + 1e-9 * self.cap[h][d].max(1.0) {
                return Some(Block::Capacity {
                    dimension: Resources::NAMES[d].to_string(),
                });
            }
        }
        if let Some(g) = it.anti
            && st.anti[g * self.hosts() + h] > 0
        {
            return Some(Block::AntiAffinity);
        }
        if let Some(p) = it.partner {
            match st.assign[p] {
                Some(hp) if hp == h || self.zone[hp] == self.zone[h] => {
                    return Some(Block::ShadowSeparation);
                }
                None if it.role == Role::Shadow => return Some(Block::PrimaryUnplaced),
                _ => {}
            }
        }
        None
    }

    /// True when every spread group in `groups` is within the skew.
    pub(crate) fn spread_ok(&self, st: &State, groups: &[usize]) -> bool {
        groups.iter().all(|&g| {
            let zs = &self.spread_zones[g];
            let counts = zs.iter().map(|&z| st.spread[g * self.zones + z]);
            let (lo, hi) = counts.fold((u32::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
            zs.is_empty() || hi - lo <= self.max_skew
        })
    }

    pub(crate) fn empty_state(&self) -> State {
        State {
            assign: vec![None; self.items.len()],
            used: vec![[0.0; 3]; self.hosts()],
            count: vec![0; self.hosts()],
            anti: vec![0; self.anti_groups * self.hosts()],
            spread: vec![0; self.spread_zones.len() * self.zones],
        }
    }

    pub(crate) fn add(&self, st: &mut State, i: usize, h: usize) {
        let it = &self.items[i];
        st.assign[i] = Some(h);
        for d in 0..3 {
            st.used[h][d] += it.req[d];
        }
        st.count[h] += 1;
        if let Some(g) = it.anti {
            st.anti[g * self.hosts() + h] += 1;
        }
        if let Some(g) = it.spread {
            st.spread[g * self.zones + self.zone[h]] += 1;
        }
    }

    pub(crate) fn remove(&self, st: &mut State, i: usize) {
        let Some(h) = st.assign[i].take() else { return };
        let it = &self.items[i];
        for d in 0..3 {
            st.used[h][d] -= it.req[d];
        }
        st.count[h] -= 1;
        if let Some(g) = it.anti {
            st.anti[g * self.hosts() + h] -= 1;
        }
        if let Some(g) = it.spread {
            st.spread[g * self.zones + self.zone[h]] -= 1;
        }
    }

    /// Moves items to new hosts together; on any refusal the state is left
    /// as it was and `false` returned. A primary may only leave the
    /// placement with its shadow.
    pub(crate) fn try_move(&self, st: &mut State, changes: &[(usize, Option<usize>)]) -> bool {
        let old: Vec<(usize, Option<usize>)> =
            changes.iter().map(|&(i, _)| (i, st.assign[i])).collect();
        for &(i, _) in changes {
            self.remove(st, i);
        }
        let mut ok = true;
        // Primaries first so that a shadow sees its primary's new host.
        let mut order: Vec<&(usize, Option<usize>)> = changes.iter().collect();
        order.sort_by_key(|(i, _)| self.items[*i].role);
        for &&(i, to) in &order {
            if let Some(h) = to {
                if self.block(st, i, h).is_some() {
                    ok = false;
                    break;
                }
                self.add(st, i, h);
            }
        }
        if ok {
            // A placed shadow needs its primary placed, on another host and zone.
            ok = changes.iter().all(|&(i, _)| self.pair_ok(st, i));
            let groups: Vec<usize> = changes
                .iter()
                .filter_map(|&(i, _)| self.items[i].spread)
                .collect();
            ok = ok && self.spread_ok(st, &groups);
        }
        if !ok {
            for &(i, _) in changes {
                self.remove(st, i);
            }
            for &(i, h) in &old {
                if let Some(h) = h {
                    self.add(st, i, h);
                }
            }
        }
        ok
    }

    fn pair_ok(&self, st: &State, i: usize) -> bool {
        let Some(p) = self.items[i].partner else {
            return true;
        };
        let (prim, shadow) = if self.items[i].role == Role::Primary {
            (i, p)
        } else {
            (p, i)
        };
        match (st.assign[prim], st.assign[shadow]) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => a != b && self.zone[a] != self.zone[b],
        }
    }

    /// Greedy decreasing start: items by decreasing size, each onto the
    /// feasible host chosen by `pick` from `(host, leftover)` candidates.
    pub(crate) fn greedy(&self, best_fit: bool) -> State {
        let mut st = self.empty_state();
        let max_cap = self
            .cap
            .iter()
            .fold([0.0f64; 3], |m, c| std::array::from_fn(|d| m[d].max(c[d])));
        let size = |it: &Item| -> f64 {
            (0..3)
                .map(|d| {
                    if max_cap[d] > 0.0 {
                        it.req[d] / max_cap[d]
                    } else {
                        0.0
                    }
                })
                .sum()
        };
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        // Stable: a shadow stays right after its primary.
        order.sort_by(|&a, &b| size(&self.items[b]).total_cmp(&size(&self.items[a])));
        for i in order {
            let mut chosen: Option<(usize, f64)> = None;
            for h in 0..self.hosts() {
                if self.block(&st, i, h).is_some() {
                    continue;
                }
                let left: f64 = (0..3)
                    .map(|d| {
                        if self.cap[h][d] > 0.0 {
                            (self.cap[h][d] - st.used[h][d] - self.items[i].req[d]) / self.cap[h][d]
                        } else {
                            0.0
                        }
                    })
                    .sum();
                if !self.try_move(&mut st, &[(i, Some(h))]) {
                    continue;
                }
                self.remove(&mut st, i);
                if !best_fit {
                    chosen = Some((h, left));
                    break;
                }
                if chosen.is_none_or(|(_, l)| left < l - 1e-12) {
                    chosen = Some((h, left));
                }
            }
            if let Some((h, _)) = chosen {
                self.add(&mut st, i, h);
            }
        }
        st
    }

    /// Why item `i`, unplaced in `st`, fits no host.
    fn unplaced_reason(&self, st: &State, i: usize) -> Vec<(Block, u32)> {
        let mut counts: BTreeMap<Block, u32> = BTreeMap::new();
        let mut probe = st.clone();
        for h in 0..self.hosts() {
            let b = self.block(&probe, i, h).or_else(|| {
                if self.try_move(&mut probe, &[(i, Some(h))]) {
                    self.remove(&mut probe, i);
                    None
                } else {
                    Some(Block::Spread)
                }
            });
            if let Some(b) = b {
                *counts.entry(b).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    fn render(&self, problem: &PlacementProblem, st: &State, start: CostBreakdown) -> Placement {
        let mut assignments: Vec<Assignment> = Vec::new();
        let mut unplaced = Vec::new();
        let mut moves = Vec::new();
        for role in [Role::Primary, Role::Shadow] {
            for (i, it) in self
                .items
                .iter()
                .enumerate()
                .filter(|(_, it)| it.role == role)
            {
                let shard = problem.shards[it.shard].id.clone();
                match st.assign[i] {
                    Some(h) => assignments.push(Assignment {
                        shard: shard.clone(),
                        role,
                        host: problem.hosts[h].id.clone(),
                    }),
                    None => {
                        let blocked = self.unplaced_reason(st, i);
                        let message = unplaced_message(&shard, role, self.hosts(), &blocked);
                        tracing::warn!(shard = %shard, ?role, %message, "shard not placed");
                        unplaced.push(Unplaced {
                            shard: shard.clone(),
                            role,
                            blocked,
                            message,
                        });
                    }
                }
                if let Some(cur) = it.current
                    && st.assign[i] != Some(cur)
                {
                    moves.push(Move {
                        shard,
                        role,
                        from: problem.hosts[cur].id.clone(),
                        to: st.assign[i].map(|h| problem.hosts[h].id.clone()),
                    });
                }
            }
        }
        let bill = Bill::from_hosts(problem.hosts.iter().enumerate().filter_map(|(h, host)| {
            let paid =
                st.count[h] > 0 || host.pricing.class == crate::provider::PriceClass::Reserved;
            paid.then_some((host.provider.as_str(), host.pricing))
        }));
        Placement {
            assignments,
            unplaced,
            moves,
            cost: self.cost(st),
            start_cost: start,
            bill,
        }
    }
}

fn index_strings<'a>(it: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for s in it {
        let n = m.len();
        m.entry(s).or_insert(n);
    }
    m
}

fn unplaced_message(shard: &str, role: Role, hosts: usize, blocked: &[(Block, u32)]) -> String {
    let what = match role {
        Role::Primary => format!("shard {shard}"),
        Role::Shadow => format!("shadow of shard {shard}"),
    };
    if hosts == 0 {
        return format!("{what} not placed: there are no hosts");
    }
    let reasons: Vec<String> = blocked
        .iter()
        .map(|(b, n)| format!("{b} on {n} host{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if reasons.is_empty() {
        format!("{what} not placed: every host could take it alone, but not with the rest")
    } else {
        format!("{what} not placed: {}", reasons.join(", "))
    }
}

/// Occupancy of hosts by items, with incremental counters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct State {
    pub(crate) assign: Vec<Option<usize>>,
    pub(crate) used: Vec<[f64; 3]>,
    pub(crate) count: Vec<u32>,
    /// `[anti group][host]`.
    pub(crate) anti: Vec<u32>,
    /// `[spread group][zone]`.
    pub(crate) spread: Vec<u32>,
}

/// Places shards: best-fit and first-fit decreasing starts, then simulated
/// annealing within `policy.iterations`. Deterministic for a given policy.
pub fn place(problem: &PlacementProblem, policy: &PlacementPolicy) -> Result<Placement> {
    let model = Model::compile(problem, policy)?;
    let bfd = model.greedy(true);
    let ffd = model.greedy(false);
    let (cb, cf) = (model.cost(&bfd), model.cost(&ffd));
    let (start, start_cost) = if cf.better_than(&cb) {
        (ffd, cf)
    } else {
        (bfd, cb)
    };
    let best = anneal::improve(&model, start, policy);
    Ok(model.render(problem, &best, start_cost))
}

/// First-fit decreasing alone: the baseline the annealer must not lose to.
pub fn first_fit_decreasing(
    problem: &PlacementProblem,
    policy: &PlacementPolicy,
) -> Result<Placement> {
    let model = Model::compile(problem, policy)?;
    let st = model.greedy(false);
    let cost = model.cost(&st);
    Ok(model.render(problem, &st, cost))
}

/// The cost of a given placement (e.g. one computed elsewhere, or the
/// current one), with the hard constraints it breaks.
pub fn evaluate(
    problem: &PlacementProblem,
    policy: &PlacementPolicy,
    assignments: &[Assignment],
) -> Result<(CostBreakdown, Vec<Violation>)> {
    let model = Model::compile(problem, policy)?;
    let mut st = model.empty_state();
    let index = assignment_index(&model, problem, assignments)?;
    for (i, h) in index.into_iter().enumerate() {
        if let Some(h) = h {
            model.add(&mut st, i, h);
        }
    }
    Ok((model.cost(&st), violations(problem, policy, assignments)))
}

fn assignment_index(
    model: &Model,
    problem: &PlacementProblem,
    assignments: &[Assignment],
) -> Result<Vec<Option<usize>>> {
    let hosts: HashMap<&str, usize> = problem
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.as_str(), i))
        .collect();
    let items: HashMap<(&str, Role), usize> = model
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| ((problem.shards[it.shard].id.as_str(), it.role), i))
        .collect();
    let mut out = vec![None; model.items.len()];
    for a in assignments {
        let h = *hosts.get(a.host.as_str()).ok_or_else(|| Error::UnknownId {
            kind: "assignment",
            from: a.shard.clone(),
            target_kind: "host",
            id: a.host.clone(),
        })?;
        let i = *items
            .get(&(a.shard.as_str(), a.role))
            .ok_or_else(|| Error::UnknownId {
                kind: "assignment",
                from: a.host.clone(),
                target_kind: "shard",
                id: a.shard.clone(),
            })?;
        out[i] = Some(h);
    }
    Ok(out)
}

/// A broken hard constraint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum Violation {
    /// A host is over capacity in a dimension.
    Capacity {
        /// Host id.
        host: String,
        /// `cpu`, `memory` or `bandwidth`.
        dimension: String,
        /// Requested on the host.
        used: f64,
        /// Its capacity.
        capacity: f64,
    },
    /// A shard in a zone it may not use.
    Zone {
        /// Shard id.
        shard: String,
        /// Host id.
        host: String,
    },
    /// Two shards of an anti-affinity group on one host.
    AntiAffinity {
        /// Group name.
        group: String,
        /// Host id.
        host: String,
    },
    /// A spread group over the skew.
    Spread {
        /// Group name.
        group: String,
        /// Largest minus smallest zone count.
        skew: u32,
    },
    /// A shadow on its primary's host or zone, or without a primary.
    Shadow {
        /// Shard id.
        shard: String,
    },
}

/// Checks every hard constraint of `assignments` from scratch (independent
/// of the search's incremental bookkeeping).
pub fn violations(
    problem: &PlacementProblem,
    policy: &PlacementPolicy,
    assignments: &[Assignment],
) -> Vec<Violation> {
    let mut out = Vec::new();
    let host: HashMap<&str, &Host> = problem.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
    let shard: HashMap<&str, &ShardSpec> =
        problem.shards.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    let mut anti: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let mut spread: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    let mut where_: HashMap<(&str, Role), &Host> = HashMap::new();
    for a in assignments {
        let (Some(h), Some(s)) = (host.get(a.host.as_str()), shard.get(a.shard.as_str())) else {
            continue;
        };
        where_.insert((s.id.as_str(), a.role), h);
        *used.entry(h.id.as_str()).or_default() =
            used.get(h.id.as_str()).copied().unwrap_or_default() + s.request;
        if !s.zones.is_empty() && !s.zones.contains(&h.zone) {
            out.push(Violation::Zone {
                shard: s.id.clone(),
                host: h.id.clone(),
            });
        }
        if a.role == Role::Primary {
            if let Some(g) = &s.anti_affinity {
                *anti.entry((g.as_str(), h.id.as_str())).or_default() += 1;
            }
            if let Some(g) = &s.spread {
                *spread
                    .entry(g.as_str())
                    .or_default()
                    .entry(h.zone.as_str())
                    .or_default() += 1;
            }
        }
    }
    for (h, u) in &used {
        let cap = host[h].capacity;
        for ((dim, used), cap) in Resources::NAMES
            .iter()
            .zip(u.to_array())
            .zip(cap.to_array())
        {
            if used > cap + 1e-9 * cap.max(1.0) {
                out.push(Violation::Capacity {
                    host: h.to_string(),
                    dimension: dim.to_string(),
                    used,
                    capacity: cap,
                });
            }
        }
    }
    for ((g, h), n) in anti {
        if n > 1 {
            out.push(Violation::AntiAffinity {
                group: g.to_string(),
                host: h.to_string(),
            });
        }
    }
    for (g, counts) in spread {
        // Zones the group may use: those allowed to any of its members.
        let mut zones: Vec<&str> = Vec::new();
        for s in problem
            .shards
            .iter()
            .filter(|s| s.spread.as_deref() == Some(g))
        {
            for h in &problem.hosts {
                if (s.zones.is_empty() || s.zones.contains(&h.zone))
                    && !zones.contains(&h.zone.as_str())
                {
                    zones.push(h.zone.as_str());
                }
            }
        }
        let c: Vec<u32> = zones
            .iter()
            .map(|z| counts.get(z).copied().unwrap_or(0))
            .collect();
        let skew = c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0);
        if skew > policy.max_skew {
            out.push(Violation::Spread {
                group: g.to_string(),
                skew,
            });
        }
    }
    for s in &problem.shards {
        if let Some(sh) = where_.get(&(s.id.as_str(), Role::Shadow)) {
            let ok = s.shadow
                && where_
                    .get(&(s.id.as_str(), Role::Primary))
                    .is_some_and(|p| p.id != sh.id && p.zone != sh.zone);
            if !ok {
                out.push(Violation::Shadow {
                    shard: s.id.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
