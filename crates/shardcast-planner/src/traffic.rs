//! Traffic: how requests and sessions are split among a shard type's shards.
//!
//! - [`weights`]: a weight per shard from its health, its headroom
//!   (`1 − load`) and its proximity to the clients (`1 / (1 + latency /
//!   latency_scale_ms)`), normalised to sum to one; unhealthy shards get
//!   nothing. [`integer_weights`] rounds them for load balancers that take
//!   integers (largest remainder, so they sum exactly to the total).
//! - [`BoundedLoadRing`]: session affinity by consistent hashing with
//!   bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018). Each shard
//!   owns `vnodes` points on a ring; a session goes to the first shard
//!   clockwise from its hash that has fewer than `ceil(c × m / n)` sessions
//!   (`m` sessions, `n` shards, capacity factor `c ≥ 1`). No shard ever
//!   exceeds that bound, and adding or removing a shard moves few sessions:
//!   [`remap_fraction`] measures how many (ideally `1/N`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, check_range};
use shardcast_core::rng::hash_bytes;

/// What the balancer knows of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Shard id.
    pub id: String,
    /// Whether it passes its health checks.
    pub healthy: bool,
    /// Its utilisation, 0 idle, 1 full.
    pub load: f64,
    /// Latency from the clients, in milliseconds.
    pub latency_ms: f64,
}

/// How weights are derived. Data: parse it from TOML or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightPolicy {
    /// Latency at which proximity halves a weight, in milliseconds.
    pub latency_scale_ms: f64,
    /// Smallest headroom a healthy shard keeps, so a full shard still gets
    /// a trickle (and its load can be observed to fall).
    pub min_headroom: f64,
}

impl Default for WeightPolicy {
    fn default() -> Self {
        Self {
            latency_scale_ms: 20.0,
            min_headroom: 0.05,
        }
    }
}

/// A shard's share of traffic and the factors behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weight {
    /// Shard id.
    pub shard: String,
    /// Share of traffic; the weights of a call sum to one (or are all zero
    /// when no shard is healthy).
    pub weight: f64,
    /// `1 − load`, floored at `min_headroom`; 0 when unhealthy.
    pub headroom: f64,
    /// `1 / (1 + latency / latency_scale_ms)`.
    pub proximity: f64,
}

/// Weights of `endpoints`, in their order.
pub fn weights(endpoints: &[Endpoint], policy: &WeightPolicy) -> Result<Vec<Weight>> {
    check_range(
        "traffic.latency_scale_ms",
        policy.latency_scale_ms,
        f64::MIN_POSITIVE,
        f64::MAX,
        "must be positive",
    )?;
    check_range(
        "traffic.min_headroom",
        policy.min_headroom,
        0.0,
        1.0,
        "must lie in [0, 1]",
    )?;
    for e in endpoints {
        check_range(
            "endpoint.load",
            e.load,
            0.0,
            f64::MAX,
            "must be finite and not negative",
        )?;
        check_range(
            "endpoint.latency_ms",
            e.latency_ms,
            0.0,
            f64::MAX,
            "must be finite and not negative",
        )?;
    }
    let mut out: Vec<Weight> = endpoints
        .iter()
        .map(|e| {
            let headroom = if e.healthy {
                (1.0 - e.load).max(policy.min_headroom)
            } else {
                0.0
            };
            let proximity = 1.0 / (1.0 + e.latency_ms / policy.latency_scale_ms);
            Weight {
                shard: e.id.clone(),
                weight: headroom * proximity,
                headroom,
                proximity,
            }
        })
        .collect();
    let sum: f64 = out.iter().map(|w| w.weight).sum();
    if sum > 0.0 {
        for w in &mut out {
            w.weight /= sum;
        }
    }
    Ok(out)
}

/// Rounds weights to integers summing to `total` (largest remainder; ties
/// to the earlier shard).
pub fn integer_weights(weights: &[Weight], total: u32) -> Vec<u32> {
    let sum: f64 = weights.iter().map(|w| w.weight).sum();
    if sum <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights
        .iter()
        .map(|w| w.weight / sum * f64::from(total))
        .collect();
    let mut out: Vec<u32> = exact.iter().map(|x| x.floor() as u32).collect();
    let mut left = total.saturating_sub(out.iter().sum());
    let mut order: Vec<usize> = (0..exact.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// A consistent-hashing ring with bounded loads.
#[derive(Debug, Clone)]
pub struct BoundedLoadRing {
    shards: Vec<String>,
    /// `(hash, shard index)`, sorted.
    points: Vec<(u64, usize)>,
    capacity_factor: f64,
}

/// Where each session went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAssignment {
    /// Shard index (into the ring's shards) per session, in input order.
    pub shard_of: Vec<usize>,
    /// Sessions per shard.
    pub loads: Vec<u32>,
    /// The bound every load respects.
    pub capacity: u32,
}

impl BoundedLoadRing {
    /// A ring of `shards` with `vnodes` points each and capacity factor
    /// `capacity_factor ≥ 1`.
    pub fn new(shards: &[String], vnodes: u32, capacity_factor: f64) -> Result<Self> {
        check_range(
            "traffic.capacity_factor",
            capacity_factor,
            1.0,
            1e6,
            "must be at least 1",
        )?;
        if vnodes == 0 {
            return Err(Error::InvalidValue {
                field: "traffic.vnodes",
                value: 0.0,
                reason: "must be positive",
            });
        }
        let mut seen = std::collections::HashSet::new();
        for s in shards {
            if !seen.insert(s.as_str()) {
                return Err(Error::DuplicateId {
                    kind: "shard",
                    id: s.clone(),
                });
            }
        }
        let mut points = Vec::with_capacity(shards.len() * vnodes as usize);
        for (i, s) in shards.iter().enumerate() {
            for v in 0..vnodes {
                points.push((hash_bytes(format!("{s}#{v}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ok(Self {
            shards: shards.to_vec(),
            points,
            capacity_factor,
        })
    }

    /// The shards, in the order indices refer to.
    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    /// The load bound for `sessions` sessions: `ceil(c × sessions / n)`.
    pub fn capacity(&self, sessions: usize) -> u32 {
        if self.shards.is_empty() {
            return 0;
        }
        let avg = sessions as f64 / self.shards.len() as f64;
        // Rounding noise must not lower the bound below the exact value.
        (self.capacity_factor * avg - 1e-9).ceil().max(0.0) as u32
    }

    /// Assigns sessions in order, each to the first shard clockwise from
    /// its hash with room left. Empty when there are no shards.
    pub fn assign<S: AsRef<[u8]>>(&self, sessions: &[S]) -> SessionAssignment {
        let n = self.shards.len();
        let mut capacity = self.capacity(sessions.len());
        if n > 0 && (capacity as usize) * n < sessions.len() {
            // Only reachable through rounding with c = 1: room for everyone.
            capacity = sessions.len().div_ceil(n) as u32;
        }
        let mut loads = vec![0u32; n];
        let mut shard_of = Vec::with_capacity(sessions.len());
        if n == 0 {
            return SessionAssignment {
                shard_of,
                loads,
                capacity,
            };
        }
        for s in sessions {
            let h = hash_bytes(s.as_ref());
            let start = self.points.partition_point(|&(p, _)| p < h);
            let mut k = start;
            loop {
                let (_, shard) = self.points[k % self.points.len()];
                if loads[shard] < capacity {
                    loads[shard] += 1;
                    shard_of.push(shard);
                    break;
                }
                k += 1;
            }
        }
        SessionAssignment {
            shard_of,
            loads,
            capacity,
        }
    }
}

/// Fraction of `sessions` whose shard changes when the shard set goes from
/// `before` to `after` (ideal for adding or removing one shard: `1/N`, with
/// `N` the larger set's size).
pub fn remap_fraction<S: AsRef<[u8]>>(
    before: &[String],
    after: &[String],
    sessions: &[S],
    vnodes: u32,
    capacity_factor: f64,
) -> Result<f64> {
    if sessions.is_empty() {
        return Ok(0.0);
    }
    let a = BoundedLoadRing::new(before, vnodes, capacity_factor)?;
    let b = BoundedLoadRing::new(after, vnodes, capacity_factor)?;
    let (x, y) = (a.assign(sessions), b.assign(sessions));
    let moved = x
        .shard_of
        .iter()
        .zip(&y.shard_of)
        .filter(|(i, j)| before[**i] != after[**j])
        .count();
    Ok(moved as f64 / sessions.len() as f64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("shard-{i}")).collect()
    }

    fn sessions(m: usize) -> Vec<String> {
        (0..m).map(|i| format!("session-{i}")).collect()
    }

    #[test]
    fn weights_follow_health_load_and_proximity() {
        let e = |id: &str, healthy, load, latency_ms| Endpoint {
            id: id.into(),
            healthy,
            load,
            latency_ms,
        };
        let w = weights(
            &[
                e("near-idle", true, 0.0, 0.0),
                e("far-idle", true, 0.0, 20.0),
                e("near-busy", true, 0.5, 0.0),
                e("down", false, 0.0, 0.0),
                e("full", true, 1.2, 0.0),
            ],
            &WeightPolicy::default(),
        )
        .unwrap();
        let raw = [1.0, 0.5, 0.5, 0.0, 0.05];
        let sum: f64 = raw.iter().sum();
        for (w, r) in w.iter().zip(raw) {
            assert!((w.weight - r / sum).abs() < 1e-12, "{w:?}");
        }
        assert_eq!(integer_weights(&w, 100), vec![49, 24, 24, 0, 3]);
        assert_eq!(integer_weights(&w, 100).iter().sum::<u32>(), 100);
        let none = weights(&[e("down", false, 0.0, 0.0)], &WeightPolicy::default()).unwrap();
        assert_eq!(none[0].weight, 0.0);
        assert_eq!(integer_weights(&none, 10), vec![0]);
        assert!(weights(&[e("x", true, f64::NAN, 0.0)], &WeightPolicy::default()).is_err());
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n() {
        let s = sessions(4000);
        for n in [4, 8, 16] {
            // Nearly unbounded: plain consistent hashing, close to 1/N.
            let f = remap_fraction(&names(n), &names(n + 1), &s, 200, 1000.0).unwrap();
            let ideal = 1.0 / (n + 1) as f64;
            assert!((f - ideal).abs() < 0.5 * ideal, "n {n}: {f} vs {ideal}");
            // Bounded at c = 1.25: the bound costs some extra moves.
            let f = remap_fraction(&names(n), &names(n + 1), &s, 200, 1.25).unwrap();
            assert!(f < 3.0 * ideal, "n {n}: {f} vs {ideal}");
            // Removing a shard is symmetrical.
            let f = remap_fraction(&names(n + 1), &names(n), &s, 200, 1000.0).unwrap();
            assert!((f - ideal).abs() < 0.5 * ideal, "n {n}: {f} vs {ideal}");
        }
    }

    #[test]
    fn ring_inputs_are_checked() {
        assert!(BoundedLoadRing::new(&names(2), 10, 0.9).is_err());
        assert!(BoundedLoadRing::new(&names(2), 0, 1.5).is_err());
        let dup = vec!["a".to_string(), "a".to_string()];
        assert!(matches!(
            BoundedLoadRing::new(&dup, 10, 1.5),
            Err(Error::DuplicateId { .. })
        ));
        let empty = BoundedLoadRing::new(&[], 10, 1.5).unwrap();
        assert!(empty.assign(&sessions(3)).shard_of.is_empty());
    }

    proptest! {
        #[test]
        fn load_bound_always_holds(
            n in 1usize..16,
            m in 0usize..400,
            c in 1.0f64..3.0,
            vnodes in 1u32..40,
        ) {
            let ring = BoundedLoadRing::new(&names(n), vnodes, c).unwrap();
            let s = sessions(m);
            let a = ring.assign(&s);
            let bound = (c * m as f64 / n as f64).ceil() as u32;
            prop_assert_eq!(a.shard_of.len(), m);
            prop_assert!(a.loads.iter().all(|&l| l <= bound.max(m.div_ceil(n) as u32)), "{:?} > {}", a.loads, bound);
            prop_assert_eq!(a.loads.iter().sum::<u32>() as usize, m);
            // Same input, same assignment.
            prop_assert_eq!(&a, &ring.assign(&s));
        }
    }
}
